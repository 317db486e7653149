"""The registry's heads kept in git: every write leaves one, and every reader refuses a ledger that no
longer holds the newest (cut short or rewritten by someone who can write the storage, even by the
holder of a key a rotation retired); a write never "repairs" such a ledger by deleting versions."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines.core.errors import CheckFailed, ConfigError
from pipelines.registry import signing
from pipelines.registry import store as registry
from pipelines.registry.anchor import GitAnchor, ref_name
from pipelines.registry.signing import Keys
from tests.unit.registry.test_signing import _candidate, _key, _rewrite

MODEL = "text-classifier"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "checkout"
    path.mkdir()
    _git(path, "init", "-q")
    return path


def _open(repo: Path, keys: Keys | None = None, anchor: bool = True):
    return registry.open_store(str(repo / "registry"), MODEL, keys, GitAnchor(repo) if anchor else None)


def _two_versions(repo: Path, keys: Keys | None = None):
    store = _open(repo, keys)
    registry.init(store, by="ci")
    for i in (1, 2):
        registry.promote(store, MODEL, *_candidate(repo.parent / f"c{i}", bytes([i])), None, by="ci")
    return store


def _kept(store) -> dict:
    return store.anchor.read(store.model, store.location)


def test_every_write_leaves_its_head_in_git(repo):
    store = _two_versions(repo)
    registry.move_alias(store, MODEL, "champion", 1, reason="roll back")
    registry.move_alias(store, MODEL, "canary", 2, reason="try it")
    registry.record_lineage_commit(store, 2, "c" * 40, "lineage")
    head = registry.read_head(store)
    assert _kept(store) == head and head["seq"] == 6
    ref = ref_name(MODEL, store.location)
    log = _git(repo, "log", "--format=%s", ref).splitlines()
    assert [line.split(":")[1].split("(")[0].strip() for line in log] == [
        "lineage", "alias", "rollback", "promote", "promote", "init"]
    assert _git(repo, "status", "--porcelain") == "?? registry/"  # no branch, index or file of the checkout


@pytest.mark.parametrize("cut", ["last entry", "to before v2"])
def test_a_ledger_cut_short_after_the_newest_write_is_refused_by_every_reader(repo, cut):
    store = _two_versions(repo)
    entries = registry.read_ledger(store)
    _rewrite(store, entries[:-1] if cut == "last entry" else entries[:2])  # head.json made consistent too
    with pytest.raises(CheckFailed, match=r"registry ledger cut short: it has \d entries, git .* kept ledger head 3"):
        registry.read_ledger(store)
    assert registry.verify(store)[0].startswith("registry ledger cut short")
    assert len(registry.read_ledger(_open(repo, anchor=False))) < 3  # a reader without git is fooled


def test_a_ledger_rewritten_with_every_hash_recomputed_is_refused(repo):
    store = _two_versions(repo)
    entries = registry.read_ledger(store)
    entries[2]["by"] = "mallory"
    _rewrite(store, entries)
    with pytest.raises(CheckFailed, match="registry ledger rewritten: its entry 3 is not the one git"):
        registry.read_ledger(store)


def test_a_write_on_a_cut_ledger_is_refused_and_deletes_no_version(repo):
    store = _two_versions(repo)
    _rewrite(store, registry.read_ledger(store)[:2])  # v2's promotion cut away
    before = sorted(p.relative_to(repo) for p in (repo / "registry").rglob("*"))
    with pytest.raises(CheckFailed, match="cut short"):
        registry.promote(store, MODEL, *_candidate(repo.parent / "c3", b"\x03"), None)
    with pytest.raises(CheckFailed, match="cut short"):
        registry.move_alias(store, MODEL, "canary", 1, reason="after the cut")
    assert sorted(p.relative_to(repo) for p in (repo / "registry").rglob("*")) == before
    assert (Path(store.base) / "versions" / "v0002" / "files" / "adapter").is_dir()


def test_without_git_a_cut_ledger_still_keeps_its_versions(repo):
    """No anchor to name the cut: the next write goes on, but never deletes a version it did not note."""
    store = _open(repo, anchor=False)
    registry.init(store)
    for i in (1, 2):
        registry.promote(store, MODEL, *_candidate(repo.parent / f"c{i}", bytes([i])), None)
    _rewrite(store, registry.read_ledger(store)[:2])
    registry.move_alias(store, MODEL, "canary", 1, reason="after the cut")
    assert (Path(store.base) / "versions" / "v0002" / "manifest.json").is_file()
    with pytest.raises(CheckFailed, match="v0002 exists but the ledger does not name it"):
        registry.promote(store, MODEL, *_candidate(repo.parent / "c3", b"\x03"), None)
    assert (Path(store.base) / "versions" / "v0002" / "manifest.json").is_file()
    assert any("v0002: version directory not named by the ledger (never removed automatically" in p
               for p in registry.verify(store))


def test_an_interrupted_promotion_noted_in_its_journal_is_removed_by_the_next_write(repo):
    store = _two_versions(repo)
    base = Path(store.base)
    shutil.copytree(base / "versions" / "v0002", base / "versions" / "v0003")
    (base / registry.PENDING).write_text(json.dumps({"version": 3}))  # what a killed promotion leaves
    assert "removed by the next registry write" in registry.verify(store)[0]
    registry.move_alias(store, MODEL, "champion", 1, reason="roll back")
    assert not (base / "versions" / "v0003").exists() and not (base / registry.PENDING).exists()
    assert registry.verify(store) == []


def test_a_retired_key_stays_retired_when_its_holder_cuts_the_ledger_back(repo):
    old, new = _key(), _key()
    trusted = (signing.public_key(old),)
    store = _two_versions(repo, Keys(signer=old, trusted=trusted))
    registry.rotate_key(store, signing.public_key(new), retire=True)
    # the old key's holder (who can write the storage) cuts the rotation away and signs a rollback
    entries = registry.read_ledger(store)[:3]
    forged = {"seq": 4, "at": "2026-12-01T00:00:00+00:00", "action": "rollback", "version": 1, "registered": None,
              "aliases": {"champion": 1, "previous": 2}, "by": "old key holder", "reason": "forged",
              "prev_hash": entries[-1]["hash"]}
    forged["hash"] = registry.entry_hash(forged)
    forged["signature"] = Keys(signer=old).sign(forged["hash"])
    Path(store.path(registry.LEDGER)).write_bytes(b"".join(registry._canonical(e) + b"\n" for e in [*entries, forged]))
    Path(store.path(registry.HEAD)).write_bytes(registry._canonical({"seq": 4, "hash": forged["hash"]}))
    reader = _open(repo, Keys(trusted=trusted))
    with pytest.raises(CheckFailed, match="registry ledger rewritten: its entry 4 is not the one git"):
        registry.read_ledger(reader)
    assert registry.aliases(registry.read_ledger(_open(repo, Keys(trusted=trusted), anchor=False)))["champion"] == 1


def test_a_key_not_trusted_at_the_tip_is_refused_before_anything_is_written(repo):
    key, stranger = _key(), _key()
    trusted = (signing.public_key(key),)
    store = _two_versions(repo, Keys(signer=key, trusted=trusted))
    before = {name: Path(store.path(name)).read_bytes() for name in (registry.LEDGER, registry.HEAD)}
    kept = _kept(store)
    with pytest.raises(ConfigError, match="is not trusted at the tip"):
        registry.move_alias(_open(repo, Keys(signer=stranger, trusted=trusted)), MODEL, "champion", 1, reason="a stranger")
    assert {name: Path(store.path(name)).read_bytes() for name in before} == before and _kept(store) == kept
    assert registry.verify(_open(repo, Keys(trusted=trusted))) == []  # the registry still works


def test_a_scratch_registry_of_the_same_model_has_a_history_of_its_own(repo, tmp_path):
    _two_versions(repo)
    scratch = registry.open_store(str(tmp_path / "scratch"), MODEL, anchor=GitAnchor(repo))
    registry.init(scratch)
    assert len(registry.read_ledger(scratch)) == 1 and registry.read_ledger(_open(repo))


def test_a_worker_pushes_its_heads_to_the_shared_remote(repo, tmp_path):
    work = tmp_path / "worker"
    work.mkdir()
    _git(work, "init", "-q")
    store = registry.open_store(str(repo / "registry"), MODEL, anchor=GitAnchor(work, remote=str(repo)))
    registry.init(store)
    registry.promote(store, MODEL, *_candidate(tmp_path / "c1", b"\x01"), None)
    assert _kept(_open(repo))["seq"] == 2  # the checkout (the remote) holds what the worker wrote
