"""Self-hosted against API: cost per unit, the ratio, the break-even volume and the monthly bill.

Inputs: a `Capacity` measured on one machine (requests per second at the highest load whose p99
stayed under the latency objective, and the tokens an average request carries), the machine's price
per hour and the API prices (`pipelines.core.config.CostParams`).
Outputs: plain dicts, one per API model compared (`compare`), and the two monthly-cost curves
against volume (`curve`) for the plot.

The model: a self-hosted server costs its machines' hours whether busy or idle; serving V requests
a month takes ceil(V / capacity) machines kept up all month. An API costs each request's tokens at
list price. So at full use the self-hosted cost per request is `usd_per_hour / (3600 * rps)`; the
break-even volume is where one machine's month equals the API's bill for the same requests; below
it the API is cheaper, above it (while one machine keeps up) self-hosting is, by up to the ratio.
Nothing here guesses: a missing measurement or price is an error the caller reports.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

CHARS_PER_TOKEN = 4  # a classifier's text as an LLM API would count it: an estimate, said so wherever used


def api_tokens_estimate(texts: list[str], prompt_tokens: float) -> float:
    """The input tokens a classifier's request would cost at an LLM API: its text at CHARS_PER_TOKEN
    characters a token, plus the instructions and label list (`cost.api_prompt_tokens`)."""
    return sum(len(t) for t in texts) / max(len(texts), 1) / CHARS_PER_TOKEN + prompt_tokens


@dataclass(frozen=True)
class Capacity:
    """What one machine of `hardware` served at the highest measured load that met the latency objective."""

    hardware: str
    requests_per_s: float
    input_tokens_per_request: float
    output_tokens_per_request: float
    p99_ms: float
    concurrency: int

    def __post_init__(self) -> None:
        if not self.requests_per_s > 0:
            raise ValueError(f"capacity on {self.hardware}: requests_per_s must be > 0, not {self.requests_per_s}")
        if self.input_tokens_per_request < 0 or self.output_tokens_per_request < 0:
            raise ValueError(f"capacity on {self.hardware}: token counts must not be negative")

    def per_month(self, hours: float) -> float:
        return self.requests_per_s * 3600 * hours


def api_usd_per_request(input_tokens: float, output_tokens: float, usd_per_1m_input: float,
                        usd_per_1m_output: float) -> float:
    return (input_tokens * usd_per_1m_input + output_tokens * usd_per_1m_output) / 1e6


def self_hosted_usd_per_request(capacity: Capacity, usd_per_hour: float) -> float:
    """At full use: the machine's hour spread over the requests it serves in that hour."""
    return usd_per_hour / (3600 * capacity.requests_per_s)


def per_million_tokens(capacity: Capacity, usd_per_hour: float) -> dict[str, float | None]:
    """The machine's time per 1M tokens at full use: all of it charged to the output tokens (prefill
    taken as free), and spread over every token in and out."""
    own = self_hosted_usd_per_request(capacity, usd_per_hour)
    out, both = capacity.output_tokens_per_request, capacity.input_tokens_per_request + capacity.output_tokens_per_request
    return {"usd_per_1m_output_tokens": own / out * 1e6 if out else None,
            "usd_per_1m_tokens": own / both * 1e6 if both else None}


def machines_for(volume: float, capacity: Capacity, hours: float) -> int:
    """Machines kept up all month to serve `volume` requests a month (one at least while there is traffic)."""
    return max(1, math.ceil(volume / capacity.per_month(hours))) if volume > 0 else 0


def monthly(volume: float, capacity: Capacity, usd_per_hour: float, hours: float, api_per_request: float) -> dict:
    return {"requests": volume, "machines": machines_for(volume, capacity, hours),
            "self_hosted_usd": machines_for(volume, capacity, hours) * usd_per_hour * hours,
            "api_usd": volume * api_per_request}


def break_even(capacity: Capacity, usd_per_hour: float, hours: float, api_per_request: float) -> float | None:
    """The monthly volume from which one machine costs less than the API for the same requests; None
    when even a fully used machine costs more per request than the API (self-hosting never pays)."""
    if api_per_request <= 0:
        return None
    volume = usd_per_hour * hours / api_per_request
    return volume if volume <= capacity.per_month(hours) else None


def compare(capacity: Capacity, usd_per_hour: float, hours: float, api: dict[str, tuple[float, float]],
            volume: float) -> list[dict]:
    """One row per API model: cost per 1k requests both ways, the ratio (API / self-hosted, at full
    use), the break-even monthly volume and both bills at `volume` requests a month."""
    own = self_hosted_usd_per_request(capacity, usd_per_hour)
    rows = []
    for name, (per_in, per_out) in api.items():
        theirs = api_usd_per_request(capacity.input_tokens_per_request, capacity.output_tokens_per_request,
                                     per_in, per_out)
        rows.append({"api": name, "self_hosted_usd_per_1k": own * 1000, "api_usd_per_1k": theirs * 1000,
                     "ratio": theirs / own, "break_even_requests_per_month": break_even(capacity, usd_per_hour,
                                                                                         hours, theirs),
                     "at_volume": monthly(volume, capacity, usd_per_hour, hours, theirs)})
    return rows


def curve(capacity: Capacity, usd_per_hour: float, hours: float, api_per_request: float,
          low: float = 1e3, high: float = 1e9, points: int = 61) -> list[dict]:
    """Both monthly bills over volumes spaced evenly on a log scale, for the plot."""
    step = (math.log10(high) - math.log10(low)) / (points - 1)
    return [monthly(10 ** (math.log10(low) + i * step), capacity, usd_per_hour, hours, api_per_request)
            for i in range(points)]


def report(model: str, champion: int | None, record: dict | None, hardware: str, usd_per_hour: float,
           hours: float, api: dict[str, tuple[float, float]], volume: float) -> dict:
    """One model's comparison from its capacity record, or why there is none ("unknown", never a guess)."""
    out = {"model": model, "champion": champion, "hardware": hardware, "usd_per_hour": usd_per_hour,
           "hours_per_month": hours, "monthly_requests": volume}
    if champion is None:
        return {**out, "unknown": "no champion is served"}
    if not record:
        return {**out, "unknown": "no throughput measurement yet (pipelines cost --measure)"}
    if record.get("version") != champion:
        return {**out, "unknown": f"the measurement is of v{record.get('version')}, the champion is v{champion} "
                                  "(pipelines cost --measure)"}
    best = record.get("best")
    if not best:
        first = (record.get("levels") or [{}])[0]
        return {**out, "unknown": f"even one request at a time missed the p99 objective of "
                                  f"{record.get('slo_p99_ms')} ms (p99 {first.get('p99_ms')} ms, "
                                  f"{first.get('errors')} errors at 1 client)", "measured": record}
    capacity = Capacity(hardware, best["requests_per_s"], record["input_tokens_per_request"],
                        record["output_tokens_per_request"], best["p99_ms"], best["concurrency"])
    return {**out, "measured": {k: record.get(k) for k in ("host", "measured_at", "route", "slo_p99_ms",
                                                           "tokens_counted", "input_tokens_per_request",
                                                           "output_tokens_per_request")},
            "capacity": {"requests_per_s": best["requests_per_s"], "p99_ms": best["p99_ms"],
                         "concurrency": best["concurrency"], "requests_per_month": capacity.per_month(hours)},
            "self_hosted": per_million_tokens(capacity, usd_per_hour),
            "rows": compare(capacity, usd_per_hour, hours, api, volume)}


def run_cost(stages: dict[str, dict], train_on: tuple[str, float], workers_on: tuple[str, float]) -> dict:
    """What a lifecycle run's stages cost: each stage's wall time on its worker (the checkout and DVC's
    pull and push included) at the hourly price of the hardware it ran on, `train` on `train_on` (the
    `gpu` pool's kind), the others on `workers_on`: (kind, usd_per_hour) each. A stage whose timing
    is missing is listed as unknown and left out of the total, never counted as free."""
    tasks, unknown = {}, []
    for stage, timing in stages.items():
        seconds = (timing or {}).get("seconds")
        if not isinstance(seconds, (int, float)) or seconds < 0:
            unknown.append(stage)
            continue
        seconds += (timing or {}).get("checkout_seconds") or 0
        kind, usd_per_hour = train_on if stage == "train" else workers_on
        tasks[stage] = {"seconds": round(seconds, 2), "hardware": kind, "usd": seconds / 3600 * usd_per_hour}
    return {"tasks": tasks, "unknown": unknown, "seconds": round(sum(t["seconds"] for t in tasks.values()), 2),
            "usd": sum(t["usd"] for t in tasks.values())}
