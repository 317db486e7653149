"""Stage `gate`: a declarative, fail-closed promotion policy over the evaluation results.

Inputs: `evaluate.report_dir/metrics.json` and `predictions.parquet`, the candidate directory
(re-hashed: the decision is for exactly these bytes) and the `gate` params. Output:
`gate.decision_path`, a JSON decision with `passed`, the candidate hash and one entry per rule
with the measured value and threshold. Missing metrics, NaN, a crashed evaluation or a candidate
whose hash differs from the evaluated one all fail. Exit 0 on pass, 1 on fail (rules on stderr).

Against a champion the comparison is paired, example by example: McNemar's exact test on the
discordant pairs (classification) or a paired bootstrap confidence interval of the mean score
difference. A challenger significantly worse fails; with `require_improvement` it must also be
significantly better. A task that compares with its base model (causal LMs) must also be
significantly better than the base model on the same examples (`require_beats_base`), or fine-tuning
has bought nothing and the gate says so.
"""
from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.config import Params
from pipelines.core.dataio import write_json
from pipelines.core.errors import CheckFailed
from pipelines.tasks import task_spec
from pipelines.training.modeling import candidate_hash


def _rule(name: str, passed: bool, measured: Any, threshold: Any, detail: str = "") -> dict[str, Any]:
    return {"rule": name, "passed": bool(passed), "measured": measured, "threshold": threshold, "detail": detail}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for b and c discordant pairs."""
    from scipy.stats import binomtest

    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


def bootstrap_ci(diff: np.ndarray, alpha: float, resamples: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(resamples, len(diff)))
    means = diff[idx].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def floor_rules(task: str, metrics: dict[str, Any], gate) -> list[dict[str, Any]]:
    rules = []
    for name, key, kind in task_spec(task).gate_floors:
        threshold = getattr(gate, name)
        if threshold is None:
            continue
        value = metrics.get(key)
        if not _finite(value):
            rules.append(_rule(name, False, value, threshold, f"metric '{key}' is missing or not a number"))
            continue
        ok = value >= threshold if kind == "min" else value <= threshold
        rules.append(_rule(name, ok, round(value, 6), threshold, f"{key} {'>=' if kind == 'min' else '<='} {threshold}"))
    return rules


def regression_rule(task: str, per: pd.DataFrame, gate) -> dict[str, Any]:
    """Paired comparison of candidate and champion on the same examples."""
    spec = task_spec(task)
    score = spec.paired_score
    cand, champ = per[f"candidate_{score}"].to_numpy(float), per[f"champion_{score}"].to_numpy(float)
    if len(cand) == 0 or not (np.isfinite(cand).all() and np.isfinite(champ).all()):
        return _rule("no_regression", False, None, gate.alpha, "per-example results missing or not finite")
    diff = cand - champ
    if gate.significance == "mcnemar" and spec.paired_test == "mcnemar":
        b, c = int(np.sum(diff > 0)), int(np.sum(diff < 0))
        p = mcnemar_p(b, c)
        worse, better = c > b and p < gate.alpha, b > c and p < gate.alpha
        measured = {"candidate_only_correct": b, "champion_only_correct": c, "p_value": round(p, 6),
                    "accuracy_delta": round(float(diff.mean()), 6)}
    else:
        lo, hi = bootstrap_ci(diff, gate.alpha, gate.bootstrap_resamples, gate.seed)
        worse, better = hi < 0, lo > 0
        measured = {"mean_delta": round(float(diff.mean()), 6), "ci_low": round(lo, 6), "ci_high": round(hi, 6)}
    if worse:
        return _rule("no_regression", False, measured, gate.alpha, "candidate is significantly worse than the champion")
    if gate.require_improvement and not better:
        return _rule("no_regression", False, measured, gate.alpha,
                     "candidate is not significantly better than the champion (require_improvement)")
    return _rule("no_regression", True, measured, gate.alpha, "not significantly worse than the champion")


def latency_rule(metrics: dict[str, Any], gate) -> dict[str, Any] | None:
    """The candidate's latency against the champion's: the median over examples of their ratio, each
    example timed on both side by side in this evaluation (a busy machine slows both at once). None
    for tasks whose evaluation measures no such latency."""
    cand = metrics.get("candidate") or {}
    if "latency_p95_ms" not in cand and "latency_ratio_vs_champion" not in cand:
        return None
    ratio = cand.get("latency_ratio_vs_champion")
    if not (_finite(ratio) and ratio > 0):
        return _rule("max_latency_ratio", False, None, gate.max_latency_ratio,
                     "latency against the champion missing or not a number")
    return _rule("max_latency_ratio", ratio <= gate.max_latency_ratio, round(ratio, 4), gate.max_latency_ratio,
                 "median per-example latency ratio, candidate / champion, timed side by side in this evaluation")


def beats_base_rule(task: str, per: pd.DataFrame, gate) -> dict[str, Any]:
    """Paired bootstrap of candidate minus base model on the examples both answered: the lower end of
    the confidence interval must be above zero."""
    score = task_spec(task).paired_score
    cols = [f"candidate_{score}", f"base_{score}"]
    if not set(cols) <= set(per.columns):
        return _rule("beats_base", False, None, gate.alpha,
                     "the evaluation has no base-model results (evaluate.compare_base is off?)")
    both = per[cols].dropna().to_numpy(float)  # the base answers only the first evaluate.base_examples rows
    if len(both) == 0 or not np.isfinite(both).all():
        return _rule("beats_base", False, None, gate.alpha, "base-model results missing or not finite")
    diff = both[:, 0] - both[:, 1]
    lo, hi = bootstrap_ci(diff, gate.alpha, gate.bootstrap_resamples, gate.seed)
    measured = {"mean_delta": round(float(diff.mean()), 6), "ci_low": round(lo, 6), "ci_high": round(hi, 6),
                "examples": len(diff)}
    if lo > 0:
        return _rule("beats_base", True, measured, gate.alpha, f"{score} significantly better than the base model")
    return _rule("beats_base", False, measured, gate.alpha,
                 f"{score} not significantly better than the base model: fine-tuning bought nothing measurable")


def _evaluation_rules(metrics: Any, per: pd.DataFrame, decision: dict[str, Any], params: Params) -> list[dict]:
    gate = params.gate
    if not isinstance(metrics, dict) or not isinstance(metrics.get("candidate") or {}, dict):
        raise ValueError("metrics.json is not an object with a `candidate` object")
    same = metrics.get("candidate_hash") == decision["candidate_hash"]
    rules = [_rule("candidate_identity", same, metrics.get("candidate_hash"), decision["candidate_hash"],
                   "evaluated candidate is the current candidate" if same
                   else "the evaluation is for another candidate; evaluate again")]
    task = metrics.get("task", params.data.task)
    rules += floor_rules(task, metrics.get("candidate") or {}, gate)
    if task_spec(task).compares_base and gate.require_beats_base:
        rules.append(beats_base_rule(task, per, gate))
    decision["champion_version"] = metrics.get("champion_version")
    if metrics.get("champion") is not None:
        rules.append(regression_rule(task, per, gate))
        timed = latency_rule(metrics, gate) if gate.max_latency_ratio is not None else None
        rules += [timed] if timed else []
    return rules


def decide(params: Params) -> dict[str, Any]:
    """Build the decision (never raises for bad evaluation output: those are failed rules)."""
    gate, ep = params.gate, params.evaluate
    report = Path(ep.report_dir)
    decision: dict[str, Any] = {"decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "policy": gate.model_dump(mode="json"), "rules": []}
    rules = decision["rules"]
    try:
        decision["candidate_hash"] = candidate_hash(params.train.output_dir)
    except Exception as err:  # no candidate to decide on
        decision["candidate_hash"] = None
        rules.append(_rule("candidate_present", False, None, None, str(err)))
    try:
        metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
        per = pd.read_parquet(report / "predictions.parquet")
        rules += _evaluation_rules(metrics, per, decision, params)
    except Exception as err:  # missing, unreadable or malformed evaluation output: fail closed
        rules.append(_rule("evaluation_present", False, None, None,
                           f"evaluation results unreadable or malformed in {report} ({type(err).__name__})"))
    decision["passed"] = bool(rules) and all(r["passed"] for r in rules)
    return decision


def run_gate(params: Params, exit_zero: bool = False) -> dict[str, Any]:
    """Decide and write the decision; a rejection raises CheckFailed (exit 1) unless `exit_zero`
    (the lifecycle: the decision file is the outcome, recorded by DVC either way)."""
    decision = decide(params)
    write_json(params.gate.decision_path, decision)
    for r in decision["rules"]:
        if not r["passed"]:
            print(f"gate rule failed: {r['rule']}: {r['detail']} (measured {r['measured']}, threshold {r['threshold']})",
                  file=sys.stderr)
    verdict = "PASSED" if decision["passed"] else "FAILED"
    print(f"gate {verdict} for candidate {str(decision['candidate_hash'])[:12]}: "
          f"{sum(r['passed'] for r in decision['rules'])}/{len(decision['rules'])} rules; "
          f"decision in {params.gate.decision_path}", file=sys.stderr)
    if not decision["passed"] and not exit_zero:
        raise CheckFailed(f"gate failed: {', '.join(r['rule'] for r in decision['rules'] if not r['passed'])}")
    return decision
