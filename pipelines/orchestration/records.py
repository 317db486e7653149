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


def run_note(record: dict[str, Any]) -> str:
    """One line for the DAG run's note: what the run decided, or where and why it stopped."""
    if record.get("failed"):
        return f"stopped at {record['failed']['task']}: {record['failed']['error']}"
    gate = record.get("gate")
    if gate and not gate.get("passed"):
        return f"gate rejected candidate {gate['candidate'][:12]}: {gate['reasons']}"
    promoted = record.get("promotion")
    if promoted:
        verb = "promoted" if promoted.get("changed") else "already champion:"
        return f"{verb} {promoted['model']} v{promoted['version']} (gate passed: {gate and gate['summary']})"
    if record.get("approval") == "rejected":
        return "a reviewer rejected the promotion"
    return "running" if not record.get("finished") else "finished without promotion"


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
    except ValueError:
        return {"run_id": run_id, "note": "run record unreadable"}
    return value if isinstance(value, dict) else {"run_id": run_id, "note": "run record malformed"}


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
        except ValueError:
            value = None
        records.append(value if isinstance(value, dict) else {"run_id": ref.rsplit("/", 1)[-1],
                                                               "note": "run record unreadable"})
    return records
