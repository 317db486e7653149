"""A run's record: what it did and decided, kept in the run's own commits as `lineage/run.json`.

Every task that changes the run commits the record with its results, so any component that can
read the git remote (a worker, the scheduler's listener, the UI plugin, an auditor) reads the
record there: `read(remote, model, run_id)`, `list_runs(remote, model)`. No shared disk.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from pipelines.core.dataio import write_json
from pipelines.core.errors import CheckFailed
from pipelines.orchestration import gitops
from pipelines.orchestration.runspace import run_ref_name

RECORD = "lineage/run.json"


def load(root: Path) -> dict[str, Any]:
    path = root / RECORD
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def update(root: Path, **fields: Any) -> dict[str, Any]:
    """Merge fields into the record of the checkout at `root` (atomic write); returns the record."""
    record = load(root)
    record.update(fields)
    record["note"] = run_note(record)
    (root / RECORD).parent.mkdir(parents=True, exist_ok=True)
    write_json(root / RECORD, record)
    return record


def review(response: dict[str, Any] | None) -> dict[str, Any] | None:
    """A person's answer to the approval step (the `approve` task's return value: Airflow's HITL
    payload) as the record keeps it: decision, who, when. None when no one was asked."""
    if not isinstance(response, dict) or not response.get("chosen_options"):
        return None
    user = response.get("responded_by_user") or {}
    at = response.get("responded_at")
    return {"decision": "approved" if response["chosen_options"] == ["Approve"] else "rejected",
            "by": user.get("name") or user.get("id") or "unknown", "by_id": user.get("id"),
            "at": at.isoformat() if hasattr(at, "isoformat") else at}


def approved_by(record: dict[str, Any], approvers: tuple[str, ...]) -> str | None:
    """Who approved the promotion of a run that asked for a person's approval (None: it did not ask).
    Raises CheckFailed unless the record holds an "Approve" answer from an allowed approver (any user
    Airflow let answer, when `approvers` is empty): a step marked done without an answer, a rejection,
    or an answer by someone else promotes nothing."""
    if not (record.get("snapshot") or {}).get("require_approval"):
        return None
    said = record.get("review")
    if not isinstance(said, dict):
        raise CheckFailed("this run needs a person's approval to promote (require_approval) and none is recorded: "
                          "the approval step was skipped or marked done without an answer; nothing promoted")
    if said.get("decision") != "approved":
        raise CheckFailed(f"{said.get('by')} rejected the promotion; nothing promoted")
    if approvers and said.get("by_id") not in approvers:
        raise CheckFailed(f"{said.get('by')} approved, but is not one of lifecycle.approvers "
                          f"({', '.join(approvers)}); nothing promoted")
    return str(said.get("by"))


def awaiting_approval(record: dict[str, Any]) -> bool:
    """The gate passed, the run asked for a person's approval and no one has answered yet."""
    gate = record.get("gate") or {}
    snapshot = record.get("snapshot") or {}
    return bool(gate.get("passed") and snapshot.get("require_approval") and not record.get("review")
                and not record.get("promotion") and not record.get("finished") and not record.get("failed"))


def run_note(record: dict[str, Any]) -> str:
    """One line for the DAG run's note: what the run decided, or where and why it stopped, and what
    its compute cost once the lineage task has added it up."""
    spent = record.get("compute")
    if isinstance(spent, dict) and isinstance(spent.get("usd"), (int, float)):
        unknown = f", {len(spent.get('unknown') or [])} stage(s) untimed" if spent.get("unknown") else ""
        return f"{_decided(record)}; compute {spent.get('seconds', 0):.0f} s, ${spent['usd']:.4f}{unknown}"
    return _decided(record)


def _decided(record: dict[str, Any]) -> str:
    if record.get("failed"):
        return f"stopped at {record['failed']['task']}: {record['failed']['error']}"
    gate = record.get("gate")
    if gate and not gate.get("passed"):
        return f"gate rejected candidate {gate['candidate'][:12]}: {gate['reasons']}"
    promoted = record.get("promotion")
    if promoted:
        verb = "promoted" if promoted.get("changed") else "already champion:"
        by = f", approved by {promoted['approved_by']}" if promoted.get("approved_by") else ""
        return f"{verb} {promoted['model']} v{promoted['version']} (gate passed: {gate and gate['summary']}{by})"
    said = record.get("review") or {}
    if said.get("decision") == "rejected":
        return (f"{said['by']} rejected the promotion (gate passed: {gate and gate['summary']}); "
                "the champion keeps serving")
    if awaiting_approval(record):
        return f"gate passed ({gate['summary']}); waiting for a person to approve the promotion"
    return "running" if not record.get("finished") else "finished without promotion"


OBJECTS = ("snapshot", "stages", "gate", "promotion", "review", "failed", "compute", "run")


def checked(value: Any, run_id: str) -> dict[str, Any]:
    """A record as readers may use it: an object whose parts are objects; otherwise a stand-in that
    says the record is damaged (pages and lists show that, and go on)."""
    if not isinstance(value, dict):
        return {"run_id": run_id, "note": "run record malformed (not an object)"}
    bad = [k for k in OBJECTS if value.get(k) is not None and not isinstance(value.get(k), dict)]
    if bad:
        return {"run_id": value.get("run_id") if isinstance(value.get("run_id"), str) else run_id,
                "note": f"run record malformed ({', '.join(bad)} not an object)"}
    return value


def read(remote: str, model: str, run_id: str) -> dict[str, Any] | None:
    """The record of one run, from the tip of its ref in the git remote; None if there is none."""
    with tempfile.TemporaryDirectory(prefix="pipelines-record-") as tmp:
        if not Path(remote).is_dir():
            gitops.git(Path(tmp), "init", "--quiet")
        blob = gitops.show(Path(tmp), remote, run_ref_name(model, run_id), RECORD)
    if blob is None:
        return None
    try:
        value = json.loads(blob)
    except (ValueError, RecursionError):
        return {"run_id": run_id, "note": "run record unreadable"}
    return checked(value, run_id)


def list_runs(remote: str, model: str, limit: int = 50) -> list[dict[str, Any]]:
    """The newest runs of a model (by commit time), their records."""
    local = Path(remote)
    if not local.is_dir():
        return []  # listing a remote repository's runs needs a fetch per run: the plugin shows local ones
    out = gitops.git(local, "for-each-ref", "--sort=-committerdate", f"--count={limit}",
                     "--format=%(refname)", f"refs/runs/{model}/", check=False)
    records = []
    for ref in filter(None, out.splitlines()):
        blob = gitops.show(local, remote, ref, RECORD)
        try:
            value = json.loads(blob) if blob else None
        except (ValueError, RecursionError):
            value = None
        run_id = ref.rsplit("/", 1)[-1]
        records.append(checked(value, run_id) if value is not None else {"run_id": run_id,
                                                                           "note": "run record unreadable"})
    return records
