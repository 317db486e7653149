"""The run record: its one-line note, and reading it back from the run's ref in a git remote."""
from __future__ import annotations

import subprocess

import pytest

from pipelines.orchestration import gitops, records
from pipelines.orchestration.runspace import run_ref_name


@pytest.mark.parametrize("record, note", [
    ({"failed": {"task": "validate", "error": "2 checks failed"}}, "stopped at validate: 2 checks failed"),
    ({"gate": {"passed": False, "candidate": "abcdef0123456789", "reasons": "min_accuracy: 0.41 < 0.7"}},
     "gate rejected candidate abcdef012345: min_accuracy: 0.41 < 0.7"),
    ({"gate": {"passed": True, "summary": "5/5 rules"}, "promotion": {"model": "m", "version": 3, "changed": True}},
     "promoted m v3 (gate passed: 5/5 rules)"),
    ({"gate": {"passed": True, "summary": "5/5 rules"}, "approval": "rejected"}, "a reviewer rejected the promotion"),
    ({}, "running"), ({"finished": True}, "finished without promotion"),
])
def test_run_note(record, note):
    assert records.run_note(record) == note


def test_records_are_read_back_from_the_run_refs(tmp_path):
    remote = tmp_path / "remote"
    subprocess.run(["git", "init", "-q", "-b", "main", str(remote)], check=True)
    gitops.git(remote, "commit", "--quiet", "--allow-empty", "-m", "start")
    for run_id in ("manual__2026-01-01T00:00:00+00:00", "scheduled__b"):
        work = tmp_path / run_id.replace(":", "_")
        gitops.checkout(work, str(remote), "HEAD")
        records.update(work, run_id=run_id, gate={"passed": True, "summary": "3/3 rules"})
        sha = gitops.commit_all(work, "record", ["lineage/run.json"])
        assert gitops.push(work, str(remote), sha, run_ref_name("m", run_id), expect="")
        other = gitops.commit_all(work, "another", [])
        assert not gitops.push(work, str(remote), other, run_ref_name("m", run_id), expect="")  # it exists now
        assert not gitops.push(work, str(remote), other, run_ref_name("m", run_id), expect="0" * 40)
        assert gitops.push(work, str(remote), sha, run_ref_name("m", run_id), expect=sha)  # compare-and-swap
    got = records.read(str(remote), "m", "manual__2026-01-01T00:00:00+00:00")
    assert got["run_id"] == "manual__2026-01-01T00:00:00+00:00" and got["note"] == "running"
    assert records.read(str(remote), "m", "nope") is None and records.read(str(remote), "other", "scheduled__b") is None
    assert {r["run_id"] for r in records.list_runs(str(remote), "m")} == {"manual__2026-01-01T00:00:00+00:00",
                                                                          "scheduled__b"}
    assert ":" not in run_ref_name("m", "manual__2026-01-01T00:00:00+00:00")
