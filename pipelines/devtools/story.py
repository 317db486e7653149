"""What a person reads after a lifecycle run: a short story per run, and one table for the demo.

Inputs: a run's record (`orchestration.records`: what it decided) and its evidence (the JSON reports
the run committed to the lineage branch, read back by `evidence`). Outputs: plain text lines;
`render` and `table` are pure, so the same story is tested without Airflow.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.orchestration import gitops
from pipelines.registry.audit import show_value

# Evidence the story reads from the run's lineage commit: its name -> path in the model folder.
EVIDENCE = {"validate": "reports/validate/result.json", "train": "reports/train/metrics.json",
            "evaluate": "reports/evaluate/metrics.json", "gate": "reports/gate/decision.json"}
# The headline metrics of each task, in the order shown (the first found is the "score" column).
HEADLINE = ("accuracy", "macro_f1", "min_class_recall", "field_match", "json_valid", "rouge_l", "golden_pass_rate")


def evidence(root: Path, model: str, record: dict[str, Any]) -> dict[str, Any]:
    """The run's reports from its lineage commit ({} for each one it never wrote)."""
    commit = record.get("lineage_commit")
    out: dict[str, Any] = {}
    for name, rel in EVIDENCE.items():
        blob = gitops.show(root, str(root), commit, f"projects/{model}/{rel}") if commit else None
        try:
            out[name] = json.loads(blob) if blob else {}
        except ValueError:
            out[name] = {}
    return out


def _headline(metrics: dict[str, Any] | None) -> str:
    metrics = metrics or {}
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in HEADLINE if isinstance(metrics.get(k), (int, float)))


def checklist(decision: dict[str, Any]) -> list[str]:
    """The gate's rules as a checklist: mark, rule, measured value, threshold."""
    lines = []
    for rule in decision.get("rules", []):
        mark = "PASS" if rule.get("passed") else "FAIL"
        threshold = rule.get("threshold")
        lines.append(f"    [{mark}] {rule.get('rule', '?'):<22} measured {show_value(rule.get('measured'))}"
                     + (f"   threshold {show_value(threshold)}" if threshold is not None else ""))
    return lines


def render(model: str, title: str, record: dict[str, Any], reports: dict[str, Any], log: str | None = None) -> str:
    """The story of one run in a dozen lines."""
    lines = [f"== {model}: {title}"]
    snap = record.get("snapshot") or {}
    if snap:
        lines.append(f"  data      {len(snap.get('files', []))} drop file(s), md5 {str(snap.get('md5'))[:12]}")
    val = reports.get("validate") or {}
    if val:
        failed = val.get("failed_checks") or []
        lines.append(f"  validate  {val.get('status')}: {val.get('rows')} rows, {len(val.get('checks', []))} checks"
                     + (f", {val.get('quarantined_rows')} rows quarantined" if val.get("quarantined_rows") else "")
                     + (f" ({', '.join(failed)})" if failed and val.get("success") else
                        f"; failed: {', '.join(failed)}" if failed else ""))
    trn = reports.get("train") or {}
    stages = record.get("stages") or {}
    if trn:
        ran = "trained" if (stages.get("train") or {}).get("ran", True) else "restored from the run-cache"
        lines.append(f"  train     {ran}: {trn.get('steps')} steps on {trn.get('train_examples')} examples in "
                     f"{trn.get('duration_seconds')} s, eval loss {show_value(trn.get('eval_loss'))}")
    ev = reports.get("evaluate") or {}
    if ev:
        on = ev.get("scored_on") or {"kind": "test_split"}
        line = f"  evaluate  {ev.get('test_rows')} {on['kind'].replace('_', ' ')} rows: {_headline(ev.get('candidate'))}"
        if ev.get("champion"):
            line += f"\n            champion v{ev.get('champion_version')} on the same rows: {_headline(ev['champion'])}"
        lines.append(line)
    gate = reports.get("gate") or {}
    if gate:
        lines.append(f"  gate      {'PASSED' if gate.get('passed') else 'REJECTED'}")
        lines += checklist(gate)
    if record.get("failed"):
        lines.append(f"  STOPPED   at {record['failed'].get('task')}: {record['failed'].get('error')}")
    promo = record.get("promotion")
    if promo:
        lines.append(f"  promote   {promo.get('model')} v{promo.get('version')} is champion"
                     + ("" if promo.get("changed") else " (already was)"))
    elif gate and not gate.get("passed"):
        lines.append("  promote   nothing: the champion keeps serving")
    if record.get("lineage_commit"):
        lines.append(f"  lineage   commit {record['lineage_commit'][:12]} on branch {record.get('lineage_branch')}")
    spent = record.get("compute") or {}
    if isinstance(spent.get("usd"), (int, float)):
        kinds = sorted({t.get("hardware") for t in (spent.get("tasks") or {}).values()})
        lines.append(f"  compute   {spent.get('seconds', 0):.0f} s of workers, ${spent['usd']:.4f} at "
                     f"{', '.join(map(str, kinds))} prices (pipelines cost --runs)")
    if log:
        lines.append(f"  log       {log}")
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    """One line per run: model, run, outcome, the headline score and the reason."""
    header = ("model", "run", "outcome", "score", "compute", "why")
    cells = [header] + [tuple(str(r.get(k, "")) for k in header) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header) - 1)]
    out = []
    for i, row in enumerate(cells):
        out.append("  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[-1])
        if i == 0:
            out.append("  ".join("-" * w for w in widths) + "  " + "-" * 3)
    return "\n".join(out)


def outcome(record: dict[str, Any], reports: dict[str, Any]) -> dict[str, str]:
    """The table's cells for one run."""
    spent = (record.get("compute") or {}).get("usd")
    return {**_decided(record, reports), "compute": f"${spent:.4f}" if isinstance(spent, (int, float)) else ""}


def _decided(record: dict[str, Any], reports: dict[str, Any]) -> dict[str, str]:
    gate = reports.get("gate") or {}
    cand = (reports.get("evaluate") or {}).get("candidate") or {}
    score = next((f"{k} {cand[k]:.3f}" for k in HEADLINE if isinstance(cand.get(k), (int, float))), "")
    if record.get("failed"):
        return {"outcome": f"stopped at {record['failed'].get('task')}", "score": "",
                "why": str(record["failed"].get("error"))[:90]}
    if gate and not gate.get("passed"):
        failed = [r["rule"] for r in gate.get("rules", []) if not r.get("passed")]
        return {"outcome": "rejected", "score": score, "why": "failed " + ", ".join(failed)}
    promo = record.get("promotion") or {}
    if promo:
        return {"outcome": f"promoted v{promo.get('version')}", "score": score, "why": "every gate rule passed"}
    return {"outcome": "no promotion", "score": score, "why": str(record.get("note", ""))[:90]}
