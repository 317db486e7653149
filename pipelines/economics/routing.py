"""Hybrid routing on the cost-quality frontier: which confidence threshold to send upstream below.

Inputs: per validation example, the local model's top score and whether its answer was right; the
upstream's accuracy (configured, or measured on a sample of its real answers); the API's price per
request; the quality floor the hybrid must meet.
Outputs: the frontier (`frontier`: one point per threshold with the share of requests sent upstream,
the accuracy of the blended answers and the API's cost per 1k requests) and the threshold chosen on
it (`choose`: the cheapest point that meets the floor).

The model: a request whose top score is under the threshold is answered by the upstream, which is
right with probability `upstream_accuracy`; the others keep the local answer. Every request pays the
local model; the routed share also pays the API, so cost rises with the share and the cheapest
threshold meeting the floor is the one routing the fewest requests. The local machine's cost per
request (`pipelines cost --measure`) is the same at every threshold and is added by the caller.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipelines.economics import cost

if TYPE_CHECKING:
    from pipelines.core.config import Params

GRID = tuple(round(i / 100, 2) for i in range(101))  # thresholds tried: 0.00 (never route) .. 1.00


def tally(confidence: Sequence[float], correct: Sequence[bool], thresholds: Sequence[float] = GRID) -> dict:
    """What the frontier needs of the scored examples, kept as evidence: how many there were, how many
    the local model got right, and per threshold how many score under it and how many of those were
    right. Any upstream accuracy or price can be tried on it later (`pipelines route tune`)."""
    if len(confidence) != len(correct) or not len(confidence):
        raise ValueError("routing needs one confidence and one outcome per example, and at least one example")
    pairs = sorted(zip(map(float, confidence), map(bool, correct)))
    below, right_below, i, right = [], [], 0, 0
    for t in thresholds:
        while i < len(pairs) and pairs[i][0] < t:
            right += pairs[i][1]
            i += 1
        below.append(i)
        right_below.append(right)
    return {"n": len(pairs), "correct": sum(ok for _, ok in pairs), "thresholds": list(thresholds),
            "below": below, "correct_below": right_below}


def frontier(counts: dict, upstream_accuracy: float, api_usd_per_request: float | None) -> list[dict]:
    """One point per threshold of `tally`'s counts: the share routed upstream, the blended accuracy and
    the API's $ per 1k requests (None when the upstream's price is unknown)."""
    if not 0.0 <= upstream_accuracy <= 1.0:
        raise ValueError(f"upstream accuracy must be within [0, 1], not {upstream_accuracy}")
    n, points = counts["n"], []
    for t, routed, right in zip(counts["thresholds"], counts["below"], counts["correct_below"]):
        share = routed / n
        points.append({"threshold": t, "upstream_share": round(share, 4),
                       "accuracy": round((counts["correct"] - right + upstream_accuracy * routed) / n, 4),
                       "api_usd_per_1k": None if api_usd_per_request is None
                       else round(share * api_usd_per_request * 1000, 6)})
    return points


def choose(points: list[dict], min_accuracy: float) -> dict:
    """The cheapest point (fewest routed, then the lowest threshold) whose accuracy meets the floor;
    when none does, the most accurate point, marked `meets_floor: False` with the reason."""
    meeting = [p for p in points if p["accuracy"] >= min_accuracy]
    if meeting:
        best = min(meeting, key=lambda p: (p["upstream_share"], p["threshold"]))
        return {**best, "meets_floor": True, "min_accuracy": min_accuracy}
    best = max(points, key=lambda p: (p["accuracy"], -p["upstream_share"]))
    return {**best, "meets_floor": False, "min_accuracy": min_accuracy,
            "reason": f"no threshold reaches accuracy {min_accuracy}: the best is {best['accuracy']} "
                      f"(routing {best['upstream_share']:.0%} upstream)"}


def tune(counts: dict, params: "Params", upstream_accuracy: float | None = None,
         min_accuracy: float | None = None, source: str = "given") -> dict:
    """The frontier of `counts` under the `route` params (or the given overrides; `source` says where
    a given upstream accuracy came from) and its choice."""
    ra, fb, cp = params.route, params.serve.fallback, params.cost
    accuracy = upstream_accuracy if upstream_accuracy is not None else ra.upstream_accuracy
    floor = next((f for f in (min_accuracy, ra.min_accuracy, params.gate.min_accuracy) if f is not None), None)
    if accuracy is None:
        return {"threshold": None, "reason": "route.upstream_accuracy is not set: the upstream's quality is unknown"}
    if floor is None:
        return {"threshold": None, "reason": "no quality floor: set route.min_accuracy or gate.min_accuracy"}
    price = cp.api.get(fb.model)
    per_request = None if price is None else cost.api_usd_per_request(
        cp.api_prompt_tokens + counts.get("text_tokens", 0), cp.api_answer_tokens,
        price.usd_per_1m_input, price.usd_per_1m_output)
    points = frontier(counts, accuracy, per_request)
    chosen = choose(points, floor)
    return {"threshold": chosen["threshold"], "chosen": chosen, "upstream": {
        "model": fb.model, "accuracy": accuracy, "accuracy_source": "configured: route.upstream_accuracy"
        if upstream_accuracy is None else source, "usd_per_request": per_request,
        "price": None if price is None else price.model_dump(mode="json"),
        "tokens_counted": f"estimated: text at {cost.CHARS_PER_TOKEN} characters per token, plus "
                          "cost.api_prompt_tokens and cost.api_answer_tokens"}, "frontier": points}
