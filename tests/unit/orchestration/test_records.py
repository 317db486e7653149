"""The run record: its one-line note, and reading it back from the run's ref in a git remote."""
from __future__ import annotations

import subprocess
from datetime import datetime, timezone

import pytest

from pipelines.core.errors import CheckFailed
from pipelines.orchestration import gitops, records
from pipelines.orchestration.runspace import run_ref_name


@pytest.mark.parametrize("record, note", [
    ({"failed": {"task": "validate", "error": "2 checks failed"}}, "stopped at validate: 2 checks failed"),
    ({"gate": {"passed": False, "candidate": "abcdef0123456789", "reasons": "min_accuracy: 0.41 < 0.7"}},
     "gate rejected candidate abcdef012345: min_accuracy: 0.41 < 0.7"),
    ({"gate": {"passed": True, "summary": "5/5 rules"}, "promotion": {"model": "m", "version": 3, "changed": True}},
     "promoted m v3 (gate passed: 5/5 rules)"),
    ({"gate": {"passed": True, "summary": "5/5 rules"}, "promotion": {"model": "m", "version": 4, "changed": True,
                                                                      "approved_by": "ana"}},
     "promoted m v4 (gate passed: 5/5 rules, approved by ana)"),
    ({"gate": {"passed": True, "summary": "5/5 rules"}, "review": {"decision": "rejected", "by": "bo", "at": "t"}},
     "bo rejected the promotion (gate passed: 5/5 rules); the champion keeps serving"),
    ({"gate": {"passed": True, "summary": "5/5 rules"}, "snapshot": {"require_approval": True}},
     "gate passed (5/5 rules); waiting for a person to approve the promotion"),
    ({"gate": {"passed": True, "summary": "5/5 rules"}, "snapshot": {"require_approval": True}, "finished": True},
     "finished without promotion"),  # e.g. no one answered before the approval timed out
    ({}, "running"), ({"finished": True}, "finished without promotion"),
    ({"gate": {"passed": True, "summary": "5/5 rules"}, "promotion": {"model": "m", "version": 3, "changed": True},
      "compute": {"seconds": 312.4, "usd": 0.00708, "unknown": []}},
     "promoted m v3 (gate passed: 5/5 rules); compute 312 s, $0.0071"),
    ({"finished": True, "compute": {"seconds": 10, "usd": 0.0001, "unknown": ["train"]}},
     "finished without promotion; compute 10 s, $0.0001, 1 stage(s) untimed"),
])
def test_run_note(record, note):
    assert records.run_note(record) == note


@pytest.mark.parametrize("response, said", [
    (None, None), ({}, None), ({"chosen_options": []}, None),  # not asked, or not answered
    ({"chosen_options": ["Approve"], "responded_by_user": {"id": "7", "name": "ana"},
      "responded_at": datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)},
     {"decision": "approved", "by": "ana", "by_id": "7", "at": "2026-11-26T12:00:00+00:00"}),
    ({"chosen_options": ["Reject"], "responded_by_user": {"id": "bo"}, "responded_at": "2026-11-26T13:00:00Z"},
     {"decision": "rejected", "by": "bo", "by_id": "bo", "at": "2026-11-26T13:00:00Z"}),
])
def test_a_persons_answer_to_the_approval_step(response, said):
    assert records.review(response) == said


ASKED = {"snapshot": {"require_approval": True}}
ANA = {"decision": "approved", "by": "ana", "by_id": "ana", "at": "2026-11-26T12:00:00+00:00"}


@pytest.mark.parametrize("record, approvers, outcome", [
    ({"snapshot": {"require_approval": False}}, (), None),  # not asked: nobody needs to approve
    ({}, ("ana",), None),
    ({**ASKED, "review": ANA}, (), "ana"),  # any user Airflow let answer
    ({**ASKED, "review": ANA}, ("ana", "bo"), "ana"),
    (ASKED, ("ana",), "none is recorded"),  # the step marked done without an answer
    ({**ASKED, "review": {**ANA, "decision": "rejected"}}, (), "ana rejected the promotion"),
    ({**ASKED, "review": {**ANA, "by": "mallory", "by_id": "mallory"}}, ("ana",), "mallory approved, but is not one of"),
    ({**ASKED, "review": "approved"}, (), "none is recorded"),  # not an answer Airflow gave
])
def test_a_promotion_that_asked_for_approval_needs_an_approvers_recorded_answer(record, approvers, outcome):
    if outcome is None or outcome == "ana":
        assert records.approved_by(record, approvers) == outcome
    else:
        with pytest.raises(CheckFailed, match=outcome):
            records.approved_by(record, approvers)


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
