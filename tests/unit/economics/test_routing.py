"""The routing frontier against hand-worked figures, and the threshold chosen on it."""
from __future__ import annotations

import pytest

from pipelines.core.config import parse_params
from pipelines.economics import routing

# five answers: (top score, right?)
SCORES, RIGHT = [0.2, 0.4, 0.6, 0.9, 0.95], [False, True, False, True, True]


def test_tally_counts_what_scores_under_each_threshold():
    counts = routing.tally(SCORES, RIGHT, thresholds=(0.0, 0.3, 0.5, 0.7, 1.0))
    assert counts == {"n": 5, "correct": 3, "thresholds": [0.0, 0.3, 0.5, 0.7, 1.0],
                      "below": [0, 1, 2, 3, 5], "correct_below": [0, 0, 1, 1, 3]}


@pytest.mark.parametrize("threshold, share, accuracy", [
    (0.0, 0.0, 0.6),                           # nothing routed: the local model's 3/5
    (0.3, 0.2, (3 - 0 + 0.9) / 5),             # the wrong 0.2 goes upstream, right 90% of the time
    (0.5, 0.4, (3 - 1 + 0.9 * 2) / 5),         # ... and the right 0.4: routing it can only lose
    (0.7, 0.6, (3 - 1 + 0.9 * 3) / 5),
    (1.0, 1.0, 0.9),                           # everything routed: the upstream's accuracy
])
def test_frontier_blends_kept_answers_with_the_upstreams_accuracy(threshold, share, accuracy):
    points = routing.frontier(routing.tally(SCORES, RIGHT), 0.9, api_usd_per_request=0.00003)
    point = next(p for p in points if p["threshold"] == threshold)
    assert point["upstream_share"] == share and point["accuracy"] == pytest.approx(accuracy)
    assert point["api_usd_per_1k"] == pytest.approx(share * 0.03)


@pytest.mark.parametrize("floor, threshold, meets", [
    (0.6, 0.0, True),      # the local model alone meets it: routing would only cost money
    (0.75, 0.21, True),    # the cheapest: routing the one wrong, least sure answer
    (0.94, 0.61, True),
    (0.99, 0.61, False),   # unreachable: the most accurate point, said so
])
def test_choose_takes_the_cheapest_point_that_meets_the_floor(floor, threshold, meets):
    chosen = routing.choose(routing.frontier(routing.tally(SCORES, RIGHT), 0.9, None), floor)
    assert (chosen["threshold"], chosen["meets_floor"]) == (threshold, meets)
    assert meets or "no threshold reaches accuracy 0.99" in chosen["reason"]


@pytest.mark.parametrize("route, says", [
    ({}, "route.upstream_accuracy is not set"),
    ({"upstream_accuracy": 0.9, "min_accuracy": None}, None),
])
def test_tune_says_why_when_it_cannot_choose(route, says):
    params = parse_params({"route": route, "gate": {"min_accuracy": 0.75}})
    tuned = routing.tune({**routing.tally(SCORES, RIGHT), "text_tokens": 10}, params)
    if says:
        assert tuned["threshold"] is None and says in tuned["reason"]
    else:  # the gate's floor when route.min_accuracy is null; gpt-4o-mini's list price per request
        assert tuned["threshold"] == 0.21 and tuned["chosen"]["min_accuracy"] == 0.75
        assert tuned["upstream"]["usd_per_request"] == pytest.approx(((150 + 10) * 0.15 + 5 * 0.60) / 1e6)


@pytest.mark.parametrize("confidence, correct, accuracy", [
    ([], [], 0.9), ([0.5], [True, False], 0.9), ([0.5], [True], 1.5)])
def test_bad_input_is_refused(confidence, correct, accuracy):
    with pytest.raises(ValueError):
        routing.frontier(routing.tally(confidence, correct), accuracy, None)
