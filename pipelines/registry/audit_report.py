"""The audit report of one model over a period (`pipelines audit`; the plugin serves the same page).

Inputs: the model's params and folder, its registry (ledger, manifests, evidence), the lifecycle run
records the caller read (a rejected candidate is never registered: only its run record knows it) and
the first day of the period.
Outputs: a dict (`build`) and the same as a self-contained HTML page an auditor can file
(`render_html`): every promotion, rollback and alias move in the period, with who, when and why (and
who approved); every rejected candidate, with the gate's reasons or the person who rejected it; and,
for each version those decisions put into service, the gate's evidence, the data snapshot it was
trained on and its lineage chain re-verified now (`audit.trace`).
"""
from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from pipelines.core.config import Params
from pipelines.registry import access, audit
from pipelines.registry import store as registry

DECISIONS = {"promote": "promoted", "rollback": "rolled back to", "alias": "moved an alias to"}


def _day(stamp: Any) -> date | None:
    """The UTC day of an ISO timestamp or epoch seconds; None when there is none."""
    try:
        if isinstance(stamp, (int, float)):
            return datetime.fromtimestamp(stamp, timezone.utc).date()
        return datetime.fromisoformat(str(stamp)).astimezone(timezone.utc).date()
    except (TypeError, ValueError, OverflowError):
        return None


def _in_period(stamp: Any, since: date | None) -> bool:
    day = _day(stamp)
    return since is None or (day is not None and day >= since)


def decisions(entries: list[dict], since: date | None) -> list[dict]:
    """The ledger's promotions, rollbacks and alias moves in the period, oldest first."""
    return [{"seq": e.get("seq"), "at": e.get("at"), "action": e["action"], "what": DECISIONS[e["action"]],
             "version": e.get("version"), "by": e.get("by"), "approved_by": e.get("approved_by"),
             "reason": e.get("reason"), "aliases": e.get("aliases"), "run": (e.get("run") or None)}
            for e in entries if e.get("action") in DECISIONS and _in_period(e.get("at"), since)]


def rejected(runs: list[dict], since: date | None) -> list[dict]:
    """Candidates the gate or a person turned down in the period, from the run records."""
    out = []
    for r in runs:
        gate, review = r.get("gate") or {}, r.get("review") or {}
        turned_down = gate.get("passed") is False or review.get("decision") == "rejected"
        if turned_down and _in_period(r.get("started_at"), since):
            out.append({"run_id": r.get("run_id"), "at": _when(r.get("started_at")),
                        "candidate": gate.get("candidate"), "gate": gate.get("summary"),
                        "reasons": gate.get("reasons") if gate.get("passed") is False else None,
                        "rejected_by": review.get("by") if review.get("decision") == "rejected" else None,
                        "note": r.get("note"), "lineage_commit": r.get("lineage_commit")})
    return sorted(out, key=lambda d: str(d["at"]))


def _when(stamp: Any) -> str | None:
    if isinstance(stamp, (int, float)):
        return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")
    return stamp


def version(params: Params, model: str, number: int, root: Path) -> dict[str, Any]:
    """One version's evidence: its gate decision, headline metrics, training data and lineage now."""
    chain = audit.trace(params, model, alias=None, version=number, root=root)
    links = {link["step"]: link for link in chain["links"]}
    store = access.model_store(params, model, root)
    try:
        manifest = registry.read_manifest(store, number, registry.registered(registry.read_ledger(store))[number])
    except Exception as err:  # the chain above names what is wrong with it
        manifest = {"error": f"{type(err).__name__}: {err}"}
    decision = manifest.get("gate_decision") if isinstance(manifest.get("gate_decision"), dict) else {}
    raw = links.get("raw") or {}
    return {"version": number, "verified": chain["verified"], "created_at": manifest.get("created_at"),
            "triggered_by": manifest.get("triggered_by"), "run": manifest.get("run"),
            "base_model": manifest.get("base_model"), "adapter_sha256": manifest.get("adapter_sha256"),
            "gate": {"passed": decision.get("passed"), "rules": decision.get("rules") or []},
            "metrics": {k: v for k, v in (manifest.get("metrics") or {}).items() if isinstance(v, (int, float))},
            "data": {"raw": raw.get("path"), "md5": raw.get("md5"), "files": raw.get("files") or []},
            "broken": [{"step": s, "status": link["status"], "detail": link["detail"]}
                       for s, link in links.items() if link["status"] != "ok"]}


def build(params: Params, model: str, root: Path, runs: list[dict], since: date | None = None) -> dict[str, Any]:
    """The report: decisions and rejections in the period, and the versions they put into service."""
    entries = registry.read_ledger(access.model_store(params, model, root))
    moves = decisions(entries, since)
    numbers = sorted({d["version"] for d in moves if isinstance(d["version"], int)})
    versions = [version(params, model, n, root) for n in numbers]
    return {"model": model, "since": since.isoformat() if since else None,
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "champion": registry.aliases(entries).get("champion"), "decisions": moves,
            "rejected": rejected(runs, since), "versions": versions,
            "verified": all(v["verified"] for v in versions)}


def render_html(report: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("pipelines.registry", "templates"), autoescape=True)
    return env.get_template("audit.html").render(r=report, show=audit.show_value)
