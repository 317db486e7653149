"""pipelines.registry.audit: the links an auditor relies on fail closed (issue 10, section 6)."""
from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from pipelines.core.config import parse_params
from pipelines.registry import audit as lineage
from pipelines.registry import store as registry
from pipelines.registry.evidence_branch import commit_run
from tests.integration.test_registry import make_candidate

MODEL = "text-classifier"


def _put(base, data: bytes) -> str:
    md5 = hashlib.md5(data).hexdigest()
    (base / md5[:2]).mkdir(parents=True, exist_ok=True)
    (base / md5[:2] / md5[2:]).write_bytes(data)
    return md5


@pytest.fixture
def roots(tmp_path):
    cache, remote = tmp_path / "cache", tmp_path / "remote"
    files = {"drop-0000.csv": b"text,label\na,b\n", "drop-0001.csv": b"text,label\nc,d\n"}
    listing = [{"relpath": name, "md5": _put(remote, data)} for name, data in files.items()]
    for name, data in files.items():
        _put(cache, data)
    raw = json.dumps(listing).encode()
    dir_md5 = hashlib.md5(raw).hexdigest() + ".dir"
    for base in (cache, remote):
        (base / dir_md5[:2]).mkdir(parents=True, exist_ok=True)
        (base / dir_md5[:2] / dir_md5[2:]).write_bytes(raw)
    return cache, remote, dir_md5, listing


def test_a_file_evicted_from_the_cache_is_checked_in_the_remote(roots):
    cache, remote, dir_md5, listing = roots
    evicted = listing[0]["md5"]
    (cache / evicted[:2] / evicted[2:]).unlink()
    status, detail, _ = lineage.check_dvc_object(dir_md5, [cache, remote])
    assert status == "ok", detail
    (remote / evicted[:2] / evicted[2:]).unlink()
    status, detail, _ = lineage.check_dvc_object(dir_md5, [cache, remote])
    assert status == "missing" and "drop-0000.csv" in detail


def test_an_altered_cache_copy_is_reported_even_with_an_intact_remote(roots):
    cache, remote, dir_md5, listing = roots
    md5 = listing[1]["md5"]
    (cache / md5[:2] / md5[2:]).write_bytes(b"tampered")  # `dvc checkout` would restore this copy
    status, detail, _ = lineage.check_dvc_object(dir_md5, [cache, remote])
    assert status == "altered" and "drop-0001.csv" in detail


@pytest.fixture
def promoted(tmp_path):
    store = registry.open_store(str(tmp_path / "registry"), MODEL)
    registry.init(store)
    cand, decision = make_candidate(tmp_path, "c1")
    registry.promote(store, MODEL, cand, decision, None, evidence={"gate_decision.json": b"{not json",
                                                                   "dvc.lock": b"stages: {}\n"})
    params = parse_params({"registry": {"root": str(tmp_path / "registry")}})
    return store, params, tmp_path


def test_malformed_evidence_marks_its_link_altered_instead_of_crashing(promoted):
    store, params, root = promoted
    chain = lineage.trace(params, MODEL, root=root)
    gate = next(link for link in chain["links"] if link["step"] == "gate")
    assert gate["status"] == "altered" and "malformed" in gate["detail"]
    assert chain["verified"] is False


def test_a_missing_manifest_is_an_altered_registry_link(promoted):
    store, params, root = promoted
    (root / "registry" / MODEL / "versions" / "v0001" / "manifest.json").unlink()
    chain = lineage.trace(params, MODEL, root=root)
    assert chain["verified"] is False and chain["links"][0]["status"] == "altered"
    assert "manifest missing" in chain["links"][0]["detail"]


@pytest.fixture
def repo(tmp_path):
    for cmd in (["init", "-q"], ["config", "user.email", "t@example.com"], ["config", "user.name", "t"]):
        subprocess.run(["git", *cmd], cwd=tmp_path, check=True)
    (tmp_path / "dvc.lock").write_text("stages: {}\n")
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=tmp_path, check=True)
    commit = commit_run(tmp_path, "lineage", ["dvc.lock"], {"run_id": "r1"}, "lineage: r1")
    entries = [{"action": "lineage", "version": 1, "lineage_commit": commit, "lineage_branch": "lineage"}]
    return tmp_path, commit, entries


@pytest.mark.parametrize("change, status, phrase", [
    (None, "ok", "is on branch"),
    ("delete", "missing", "is gone"),
    ("move", "altered", "no longer on branch"),
    ("rewrite", "altered", "no longer on branch"),
])
def test_the_evidence_branch_must_still_hold_the_recorded_commit(repo, change, status, phrase):
    root, commit, entries = repo
    git = lambda *a: subprocess.run(["git", *a], cwd=root, check=True, capture_output=True)  # noqa: E731
    if change == "delete":
        git("branch", "-D", "lineage")
    elif change == "move":
        git("branch", "-f", "lineage", "HEAD")
    elif change == "rewrite":
        git("checkout", "-q", "lineage")
        git("commit", "-q", "--amend", "-m", "rewritten history")
        git("checkout", "-q", "-")
    link = lineage._evidence_branch(entries, 1, {"dvc.lock": b"stages: {}\n"}, root)
    assert link["status"] == status and phrase in link["detail"], link


def test_a_version_without_a_recorded_commit_says_so(repo):
    root, _, _ = repo
    link = lineage._evidence_branch([], 1, {}, root)
    assert link["status"] == "ok" and "promoted outside a lifecycle run" in link["detail"]


@pytest.mark.parametrize("ledger, status, phrase", [
    ("as seen", "ok", "is on branch"),
    ("rewritten", "altered", "its entry 2 was rewritten"),
    ("truncated", "altered", "it has 1 entries, the commit saw 2 (deleted)"),
])
def test_the_lineage_commit_remembers_the_ledger_head_it_saw(tmp_path, ledger, status, phrase):
    """A ledger rewritten (even re-signed) or cut short after a run disagrees with git history kept elsewhere."""
    for cmd in (["init", "-q"], ["config", "user.email", "t@example.com"], ["config", "user.name", "t"]):
        subprocess.run(["git", *cmd], cwd=tmp_path, check=True)
    (tmp_path / "dvc.lock").write_text("stages: {}\n")
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=tmp_path, check=True)
    commit = commit_run(tmp_path, "lineage", ["dvc.lock"], {"run_id": "r1", "ledger_head": {"seq": 2, "hash": "h2"}},
                        "lineage: r1")
    anchor = {"action": "lineage", "version": 1, "lineage_commit": commit, "lineage_branch": "lineage", "hash": "h3"}
    entries = {"as seen": [{"hash": "h1"}, {"hash": "h2"}, anchor],
               "rewritten": [{"hash": "h1"}, {"hash": "forged"}, anchor],
               "truncated": [anchor]}[ledger]  # entries 1-2 deleted, the anchor renumbered
    link = lineage._evidence_branch(entries, 1, {"dvc.lock": b"stages: {}\n"}, tmp_path)
    assert link["status"] == status and phrase in link["detail"], link
