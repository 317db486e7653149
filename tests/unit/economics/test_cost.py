"""The cost arithmetic, checked against figures worked by hand (in the comments)."""
from __future__ import annotations

import pytest

from pipelines.economics import cost

# 10 requests/s on one machine = 36,000 an hour, 26,280,000 in a 730-hour month; each request is
# 100 tokens in and 5 out. gpt-4o-mini at $0.15/$0.60 per 1M: (100*0.15 + 5*0.60)/1e6 = $0.000018.
CAP = cost.Capacity("cpu-2vcpu", requests_per_s=10, input_tokens_per_request=100, output_tokens_per_request=5,
                    p99_ms=120, concurrency=8)
MINI = {"gpt-4o-mini": (0.15, 0.60)}


@pytest.mark.parametrize("usd_per_hour, per_1k, ratio, even", [
    (0.36, 0.01, 1.8, 14_600_000),       # $0.36/h over 36,000 requests: $0.01 per 1k; 0.36*730/0.000018
    (1.00, 1 / 36, 0.648, None),         # $0.0278 per 1k, dearer than the API even when fully used: never pays
    (0.648, 0.018, 1.0, 26_280_000),     # exactly the API's price: breaks even only at full use
])
def test_cost_per_request_ratio_and_break_even(usd_per_hour, per_1k, ratio, even):
    row, = cost.compare(CAP, usd_per_hour, 730, MINI, volume=1_000_000)
    assert row["self_hosted_usd_per_1k"] == pytest.approx(per_1k)
    assert row["api_usd_per_1k"] == pytest.approx(0.018)
    assert row["ratio"] == pytest.approx(ratio)
    assert (row["break_even_requests_per_month"] is None) is (even is None)
    if even is not None:
        assert row["break_even_requests_per_month"] == pytest.approx(even)


@pytest.mark.parametrize("volume, machines, own, api", [
    (0, 0, 0.0, 0.0),                      # no traffic, nothing kept up
    (1_000_000, 1, 262.8, 18.0),           # one machine all month ($0.36 * 730) against 1M * $0.000018
    (26_280_000, 1, 262.8, 473.04),        # one machine, fully used
    (30_000_000, 2, 525.6, 540.0),         # past one machine's capacity: a second is kept up
])
def test_monthly_bills(volume, machines, own, api):
    month = cost.monthly(volume, CAP, 0.36, 730, 0.000018)
    assert month["machines"] == machines
    assert month["self_hosted_usd"] == pytest.approx(own) and month["api_usd"] == pytest.approx(api)


def test_the_curve_spans_the_volumes_on_a_log_scale_and_crosses_at_break_even():
    points = cost.curve(CAP, 0.36, 730, 0.000018, low=1e3, high=1e9, points=61)
    assert points[0]["requests"] == pytest.approx(1e3) and points[-1]["requests"] == pytest.approx(1e9)
    cheaper_api = [p["requests"] for p in points if p["api_usd"] < p["self_hosted_usd"]]
    assert max(cheaper_api) < 14_600_000 < min(p["requests"] for p in points if p["requests"] > max(cheaper_api))


@pytest.mark.parametrize("fields, says", [
    ({"requests_per_s": 0}, "requests_per_s must be > 0"),
    ({"requests_per_s": float("nan")}, "requests_per_s must be > 0"),
    ({"input_tokens_per_request": -1}, "must not be negative"),
])
def test_a_capacity_that_was_not_measured_is_refused(fields, says):
    values = {"hardware": "cpu-2vcpu", "requests_per_s": 10, "input_tokens_per_request": 100,
              "output_tokens_per_request": 5, "p99_ms": 100, "concurrency": 1, **fields}
    with pytest.raises(ValueError, match=says):
        cost.Capacity(**values)


def test_a_free_api_never_breaks_even():
    assert cost.break_even(CAP, 0.36, 730, 0.0) is None


RECORD = {"version": 2, "best": {"requests_per_s": 10, "p99_ms": 120, "concurrency": 8}, "slo_p99_ms": 500,
          "input_tokens_per_request": 100, "output_tokens_per_request": 5, "host": {"cpu": "x", "cores": 2, "gpus": []},
          "measured_at": "2026-11-26T00:00:00Z", "route": "/v1/classify", "tokens_counted": "estimated"}


@pytest.mark.parametrize("champion, record, says", [
    (None, RECORD, "no champion is served"),
    (2, None, "no throughput measurement yet"),
    (3, RECORD, "the measurement is of v2, the champion is v3"),
    (2, {**RECORD, "best": None, "levels": [{"p99_ms": 2900.5, "errors": 0}]},
     "even one request at a time missed the p99 objective of 500 ms (p99 2900.5 ms, 0 errors at 1 client)"),
])
def test_the_report_says_unknown_and_why_rather_than_a_made_up_number(champion, record, says):
    out = cost.report("m", champion, record, "cpu-2vcpu", 0.36, 730, MINI, 1_000_000)
    assert says in out["unknown"] and "rows" not in out


def test_the_report_of_a_measured_champion():
    out = cost.report("m", 2, RECORD, "cpu-2vcpu", 0.36, 730, MINI, 1_000_000)
    row, = out["rows"]
    assert row["ratio"] == pytest.approx(1.8) and out["capacity"]["requests_per_month"] == 26_280_000
    assert out["measured"]["host"]["cores"] == 2
    # $0.00001 a request over its 5 output tokens: $2 per 1M; over its 105 tokens: $0.0952 per 1M
    assert out["self_hosted"]["usd_per_1m_output_tokens"] == pytest.approx(2.0)
    assert out["self_hosted"]["usd_per_1m_tokens"] == pytest.approx(1e-5 / 105 * 1e6)


def test_a_runs_compute_cost_prices_train_on_its_pool_and_names_what_has_no_timing():
    stages = {"validate": {"seconds": 10, "checkout_seconds": 2}, "train": {"seconds": 3600, "checkout_seconds": 0},
              "evaluate": {"ran": False}}  # no timing: unknown, not free
    got = cost.run_cost(stages, train_on=("gpu-h100", 4.916), workers_on=("cpu-2vcpu", 0.0816))
    assert got["tasks"]["train"] == {"seconds": 3600, "hardware": "gpu-h100", "usd": pytest.approx(4.916)}
    assert got["tasks"]["validate"]["usd"] == pytest.approx(12 / 3600 * 0.0816)
    assert got["unknown"] == ["evaluate"] and got["seconds"] == 3612
    assert got["usd"] == pytest.approx(4.916 + 12 / 3600 * 0.0816)
