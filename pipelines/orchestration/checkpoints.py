"""Training checkpoints on shared storage, so a retry on another worker resumes where the last one stopped.

Inputs: the checkpoint directory `train` writes in the task's workspace, and a store URL (by default
beside the DVC remote: `<remote>/pipelines-checkpoints/<model>/<run>`; any fsspec URL).
Outputs: `restore` copies the store's checkpoints into the workspace before training; `CheckpointSync`
uploads each new complete checkpoint (one with its `manifest.json`, which `checkpoint.save` writes
last) while training runs, and drops from the store those training pruned. An upload goes to a
temporary name and is then moved, so the store never shows half a checkpoint under a step's name;
`checkpoint.latest_valid` re-checks every hash on resume anyway.
"""
from __future__ import annotations

from pathlib import Path


def store_url(remote_url: str, model: str, run_key: str) -> str:
    return f"{remote_url.rstrip('/')}/pipelines-checkpoints/{model}/{run_key}"


def _fs(url: str):
    from fsspec.core import url_to_fs

    return url_to_fs(url)


def _steps(fs, base: str) -> list[str]:
    if not fs.exists(base):
        return []
    return sorted(Path(p).name for p in fs.ls(base, detail=False) if Path(p).name.startswith("step-"))


def restore(url: str, local: Path) -> list[str]:
    """Copy the store's checkpoints into `local` (which train reads); the names copied."""
    fs, base = _fs(url)
    names = [n for n in _steps(fs, base) if not (local / n).exists()]
    for name in names:
        local.mkdir(parents=True, exist_ok=True)
        fs.get(f"{base}/{name}", str(local / name), recursive=True)
    return names


class CheckpointSync:
    """Mirror the complete checkpoints of a local directory to the store; call `sync()` repeatedly."""

    def __init__(self, local: Path, url: str):
        self.local = local
        self.fs, self.base = _fs(url)
        self.uploaded: set[str] = set(_steps(self.fs, self.base))

    def sync(self) -> list[str]:
        if not self.local.is_dir():
            return []
        present = {p.name for p in self.local.iterdir() if p.name.startswith("step-") and (p / "manifest.json").is_file()}
        new = sorted(present - self.uploaded)
        for name in new:
            tmp = f"{self.base}/.{name}.uploading"
            if self.fs.exists(tmp):
                self.fs.rm(tmp, recursive=True)
            self.fs.makedirs(self.base, exist_ok=True)
            self.fs.put(str(self.local / name), tmp, recursive=True)
            self.fs.mv(tmp, f"{self.base}/{name}", recursive=True)
            self.uploaded.add(name)
        for name in sorted(self.uploaded - present):  # pruned by training (keep_checkpoints)
            if new and name < max(new):
                self.fs.rm(f"{self.base}/{name}", recursive=True)
                self.uploaded.discard(name)
        return new

    def clear(self) -> None:
        """After a successful train: the checkpoints have served their purpose."""
        if self.fs.exists(self.base):
            self.fs.rm(self.base, recursive=True)
