"""Where a served classifier operates on its cost-quality frontier (`pipelines route tune`).

Inputs: a model folder's params, its registry (the champion's routing evidence, which its evaluation
tallied on the validation split) and, when measured, its capacity record (`pipelines cost --measure`).
Outputs: a dict: the frontier re-derived under the current `route` params (or the given upstream
accuracy and floor), the threshold chosen on it, the threshold serving uses now and why, and each
point's blended cost per 1k requests (the local machine's share, when measured, plus the API's);
`write` keeps it as `reports/route/tune.json` and `frontier.svg` beside the model (atomic).

The threshold that serves is the promoted version's own (its evidence, chosen under the params of the
run that promoted it): a different floor or upstream accuracy tried here shows what it would choose;
it serves after a lifecycle run with those params promotes a version, so the ledger records it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.core.config import Params
from pipelines.core.dataio import atomic_write_bytes, write_json
from pipelines.core.errors import InputError
from pipelines.economics import cost, routing
from pipelines.economics.plot import frontier_svg
from pipelines.registry import access
from pipelines.registry import store as registry
from pipelines.serving.capacity import CAPACITY_FILE
from pipelines.serving.engine import ROUTING_EVIDENCE, tuned_threshold
from pipelines.serving.fallback import DEFAULT_THRESHOLD
from pipelines.tasks import task_spec

TUNE_FILE = "reports/route/tune.json"
PLOT_FILE = "reports/route/frontier.svg"


def report(name: str, folder: Path, params: Params, upstream_accuracy: float | None = None,
           min_accuracy: float | None = None, sample: int | None = None) -> dict[str, Any]:
    """The champion's frontier and operating point; `unknown` with the reason where there is none.
    `sample`: measure the upstream's accuracy first on that many labelled rows (`measure_upstream`)."""
    if not task_spec(params.data.task).labelled:
        return {"model": name, "unknown": f"{params.data.task} models route by serve.fallback.ood_patterns and "
                                          "min_mean_logprob; route tune sweeps a classifier's confidence threshold"}
    store = access.model_store(params, name, folder)
    entries = registry.read_ledger(store)
    champion = registry.aliases(entries).get(params.serve.alias)
    if champion is None:
        return {"model": name, "unknown": f"no {params.serve.alias} to tune: run the lifecycle first"}
    manifest = registry.read_manifest(store, champion, registry.registered(entries)[champion])
    blob = registry.read_evidence(store, champion, ROUTING_EVIDENCE, manifest)
    evidence = json.loads(blob) if blob else {}
    counts = evidence.get("counts")
    out: dict[str, Any] = {"model": name, "champion": champion, "serving": _serving(params, tuned_threshold(blob))}
    if not counts:
        return {**out, "unknown": f"v{champion} has no routing tally: promoted before evaluate tuned routing; "
                                  "the next lifecycle run's version will have one"}
    source = "given"
    if sample:
        measured = measure_upstream(params, folder, store, champion, sample)
        upstream_accuracy, source = measured["accuracy"], measured["source"]
        out["upstream_sample"] = measured
    tuned = routing.tune(counts, params, upstream_accuracy, min_accuracy, source)
    out |= {"validation_rows": counts["n"], "local_accuracy": round(counts["correct"] / counts["n"], 4),
            "scored_on": evidence.get("scored_on"), **tuned}
    if tuned.get("threshold") is None:
        return {**out, "unknown": tuned["reason"]}
    local = _local_usd_per_1k(params, folder, champion)
    out["local"] = local
    for p in out["frontier"]:
        known = isinstance(local.get("usd_per_1k"), float) and p["api_usd_per_1k"] is not None
        p["usd_per_1k"] = round(local["usd_per_1k"] + p["api_usd_per_1k"], 6) if known else None
    return out


def measure_upstream(params: Params, folder: Path, store, champion: int, n: int, seed: int = 0) -> dict[str, Any]:
    """The upstream's accuracy on `n` labelled rows of the model's raw data, asked exactly as serving
    asks it (`Upstream.classify`, the champion's labels). Rows in which `data.pii_detectors` find PII
    are never sent; answers that fail or name an unknown label count as wrong (serving keeps the
    local answer then, which this frontier does not model)."""
    import asyncio

    from pipelines.core import pii
    from pipelines.core.dataio import read_dataset
    from pipelines.serving.fallback import Upstream

    fb, data = params.serve.fallback, params.data
    upstream = Upstream.from_params(fb)
    if upstream is None:
        raise InputError("--sample: serve.fallback.url is not set: there is no upstream to ask")
    frame = read_dataset(folder / data.raw)[[data.text_column, data.label_column]].dropna().astype(str)
    for kind in data.pii_detectors:
        frame = frame[~pii.detect(frame[data.text_column], kind)]
    if frame.empty:
        raise InputError(f"--sample: {data.raw} has no labelled rows free of PII to send")
    rows = frame.sample(min(n, len(frame)), random_state=seed)
    labels = sorted(json.loads((registry.version_dir(store, champion) / "label_map.json").read_text("utf-8")))

    async def ask_all() -> list:
        return [await upstream.classify(text, labels) for text in rows[data.text_column]]

    answers = asyncio.run(ask_all())
    right = sum(a == label for (a, _, _), label in zip(answers, rows[data.label_column]))
    failed = sum(1 for _, _, error in answers if error)
    if failed == len(answers):
        raise InputError(f"--sample: the upstream at {fb.url} answered none of {len(answers)} rows "
                         f"({answers[0][2]})")
    return {"asked": len(answers), "right": right, "failed": failed, "accuracy": round(right / len(answers), 4),
            "source": f"measured: {right} of {len(answers)} raw rows right ({fb.model} at {fb.url})"}


def _serving(params: Params, tuned: float | None) -> dict[str, Any]:
    """The threshold serving applies to the champion now, and where it comes from."""
    fb = params.serve.fallback
    if isinstance(fb.classify_threshold, float):
        return {"threshold": fb.classify_threshold, "source": "serve.fallback.classify_threshold (hand-set)"}
    if tuned is not None:
        return {"threshold": tuned, "source": "tuned by the version's evaluation (its routing evidence)"}
    return {"threshold": DEFAULT_THRESHOLD, "source": "the default: the version's evaluation tuned none"}


def _local_usd_per_1k(params: Params, folder: Path, champion: int) -> dict[str, Any]:
    """The local model's cost per 1k requests at full use, from the champion's capacity measurement."""
    try:
        record = json.loads((folder / CAPACITY_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"usd_per_1k": None, "reason": "not measured: run pipelines cost --measure"}
    except (OSError, ValueError) as err:
        raise InputError(f"{folder / CAPACITY_FILE}: unreadable ({err}); run pipelines cost --measure") from None
    if record.get("version") != champion or not record.get("best"):
        return {"usd_per_1k": None, "reason": f"no capacity measured for v{champion} within the latency objective"}
    kind = params.cost.serve_on
    capacity = cost.Capacity(kind, record["best"]["requests_per_s"], 0.0, 0.0, record["best"]["p99_ms"],
                             record["best"]["concurrency"])
    per = cost.self_hosted_usd_per_request(capacity, params.cost.hardware[kind].usd_per_hour)
    return {"usd_per_1k": round(per * 1000, 6), "hardware": kind, "measured_at": record.get("measured_at")}


def write(folder: Path, doc: dict[str, Any]) -> Path:
    """The frontier (JSON) and its picture, kept beside the model (each written atomically)."""
    path = folder / TUNE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, doc)
    atomic_write_bytes(folder / PLOT_FILE, frontier_svg(doc))
    return path


def table(doc: dict[str, Any], step: float = 0.1) -> str:
    """The frontier for people: every `step` of threshold, with the chosen and the served points marked."""
    head = f"{doc['model']}"
    if "unknown" in doc:
        served = doc.get("serving")
        return (f"{head}: unknown: {doc['unknown']}"
                + (f"\n  serving routes below {served['threshold']:g} ({served['source']})" if served else ""))
    chosen, served, up = doc["chosen"], doc["serving"], doc["upstream"]
    lines = [f"{head} v{doc['champion']}: local accuracy {doc['local_accuracy']:.4f} on {doc['validation_rows']} "
             f"validation rows; upstream {up['model']} at accuracy {up['accuracy']:g} ({up['accuracy_source']}), "
             f"${(up['usd_per_request'] or 0) * 1000:.4f} per 1k requests it answers",
             f"  {'threshold':>9}{'upstream':>10}{'accuracy':>10}{'API $/1k':>11}{'total $/1k':>12}"]
    marks = {chosen["threshold"]: "chosen", served["threshold"]: "served"}
    if chosen["threshold"] == served["threshold"]:
        marks[chosen["threshold"]] = "chosen, served"
    for p in doc["frontier"]:
        t = p["threshold"]
        if t not in marks and round(t / step, 6) % 1:
            continue
        total = f"{p['usd_per_1k']:.6f}" if p.get("usd_per_1k") is not None else "unknown"
        api = f"{p['api_usd_per_1k']:.6f}" if p["api_usd_per_1k"] is not None else "unknown"
        lines.append(f"  {t:>9.2f}{p['upstream_share']:>9.1%}{p['accuracy']:>10.4f}{api:>11}{total:>12}"
                     + (f"   <- {marks[t]}" if t in marks else ""))
    lines.append(f"  chosen: {chosen['threshold']:.2f}, the cheapest reaching accuracy {chosen['min_accuracy']:g}"
                 if chosen["meets_floor"] else f"  chosen: {chosen['threshold']:.2f}: {chosen['reason']}")
    lines.append(f"  served: {served['threshold']:g} ({served['source']})")
    if doc["local"].get("reason"):
        lines.append(f"  local cost: unknown ({doc['local']['reason']})")
    return "\n".join(lines)


ROUTE_METRICS = {"pipelines_route_requests": "requests", "pipelines_route_tokens": "tokens",
                 "pipelines_route_cost_usd": "usd"}


def served_so_far(urls: list[str], model: str, key: str | None = None, timeout: float = 3.0) -> list[dict[str, Any]]:
    """Per server: this model's requests, tokens and upstream spend by route since it started, read
    from its /metrics; an unreachable or refusing server is named with the reason."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for url in urls:
        try:
            r = httpx.get(f"{url.rstrip('/')}/metrics", timeout=timeout,
                          headers={"Authorization": f"Bearer {key}"} if key else {})
            r.raise_for_status()
        except httpx.HTTPError as err:
            status = getattr(getattr(err, "response", None), "status_code", None)
            out.append({"url": url, "error": f"HTTP {status}" if status else f"unreachable ({type(err).__name__})"})
            continue
        routes: dict[str, dict[str, float]] = {}
        for family in text_string_to_metric_families(r.text):
            field = ROUTE_METRICS.get(family.name)
            for sample in family.samples if field else ():
                if sample.name.endswith("_total") and sample.labels.get("model") == model:
                    routes.setdefault(sample.labels["route"], {"requests": 0.0, "tokens": 0.0, "usd": 0.0})[
                        field] = sample.value
        out.append({"url": url, "routes": routes})
    return out
