"""Checkpoints mirrored to shared storage as training writes them: only complete ones (with their
manifest), never half a checkpoint under a step's name, pruned when training prunes, restored into a
fresh workspace, cleared after a successful train."""
from __future__ import annotations

from pathlib import Path

from pipelines.orchestration.checkpoints import CheckpointSync, restore, store_url


def _checkpoint(local: Path, step: int, complete: bool = True) -> Path:
    path = local / f"step-{step:08d}"
    path.mkdir(parents=True)
    (path / "trainable.safetensors").write_bytes(bytes([step % 256]) * 64)
    if complete:
        (path / "manifest.json").write_text("{}")
    return path


def test_complete_checkpoints_are_mirrored_pruned_restored_and_cleared(tmp_path):
    local, url = tmp_path / "ws" / "checkpoints", store_url(str(tmp_path / "remote"), "m", "run_1")
    store = Path(url)
    sync = CheckpointSync(local, url)
    assert sync.sync() == []  # nothing written yet
    _checkpoint(local, 20)
    _checkpoint(local, 40, complete=False)  # being written: no manifest yet
    assert sync.sync() == ["step-00000020"]
    assert sorted(p.name for p in store.iterdir()) == ["step-00000020"]
    (local / "step-00000040" / "manifest.json").write_text("{}")
    _checkpoint(local, 60)
    import shutil

    shutil.rmtree(local / "step-00000020")  # training keeps the newest two
    assert sync.sync() == ["step-00000040", "step-00000060"]
    assert sorted(p.name for p in store.iterdir()) == ["step-00000040", "step-00000060"]
    assert not any(p.name.endswith(".uploading") for p in store.iterdir())

    fresh = tmp_path / "other-worker" / "checkpoints"  # a retry on another machine
    assert restore(url, fresh) == ["step-00000040", "step-00000060"]
    assert (fresh / "step-00000060" / "trainable.safetensors").read_bytes() == bytes([60]) * 64
    assert restore(url, fresh) == []  # already there
    CheckpointSync(fresh, url).clear()
    assert not store.exists() and restore(url, tmp_path / "third") == []
