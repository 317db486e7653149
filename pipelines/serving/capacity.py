"""What the served champion sustains on this machine, measured (for `pipelines cost`).

Inputs: a model folder (its params.yaml, raw data and registry), how long each load level runs.
Outputs: the capacity record, kept beside the model as `reports/cost/capacity.json` (atomic write):
the model and version measured, this host (CPU, cores, GPUs), when, the latency objective, every load
level tried and the best that met the objective, and the tokens an average request carried.

`pipelines serve` is started on loopback for the model's `serve.alias`, and `loadtest.capacity` drives
it with requests made from the model's own raw data (what its production traffic looks like): one text
per `/v1/classify` request, or one prompt per greedy `/v1/chat/completions` request of at most
`cost.max_tokens` tokens, whose `usage` gives the tokens. A classifier's request to an LLM API would
carry instructions and the label list too: `cost.api_prompt_tokens` on top of the text, counted at
OpenAI's rule of thumb of 4 characters per token (an estimate, named as such in the record).
"""
from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.core.config import Params
from pipelines.core.dataio import read_dataset, write_json
from pipelines.core.errors import InputError
from pipelines.economics import cost
from pipelines.economics.cost import CHARS_PER_TOKEN, api_tokens_estimate
from pipelines.serving import loadtest
from pipelines.tasks import task_spec

CAPACITY_FILE = "reports/cost/capacity.json"
PLOT_FILE = "reports/cost/volume.svg"


def host() -> dict[str, Any]:
    """This machine, as a price table would name it: CPU model, cores, GPUs (nvidia-smi, when present)."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus: list[str] = []
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        gpus = [g.strip() for g in out.stdout.splitlines() if g.strip()] if out.returncode == 0 else []
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "gpus": gpus, "machine": platform.machine()}


def workload(params: Params, folder: Path, limit: int = 64) -> dict[str, Any]:
    """The route and request bodies of this model's load run, from its raw data."""
    data = params.data
    frame = read_dataset(folder / data.raw)
    if task_spec(data.task).labelled:
        texts = [t for t in frame[data.text_column].astype(str).tolist() if t.strip()][:limit]
        if not texts:
            raise InputError(f"{data.raw}: no texts to send")
        return {"path": "/v1/classify", "bodies": [{"texts": [t]} for t in texts],
                "api_input_tokens": round(api_tokens_estimate(texts, params.cost.api_prompt_tokens), 1),
                "api_output_tokens": params.cost.api_answer_tokens,
                "tokens_counted": f"estimated: text at {CHARS_PER_TOKEN} characters per token, plus "
                                  f"cost.api_prompt_tokens ({params.cost.api_prompt_tokens}) and api_answer_tokens"}
    prompts = [p for p in frame[data.prompt_column].astype(str).tolist() if p.strip()][:limit]
    if not prompts:
        raise InputError(f"{data.raw}: no prompts to send")
    return {"path": "/v1/chat/completions", "tokens_counted": "measured: the server's usage counts",
            "bodies": [{"messages": [{"role": "user", "content": p}], "max_tokens": params.cost.max_tokens,
                        "temperature": 0} for p in prompts]}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(params: Params, folder: Path, version: int, seconds: float = 5.0,
            levels: tuple[int, ...] = loadtest.LEVELS) -> dict[str, Any]:
    """Serve the model on loopback, find its capacity under the latency objective, keep the record."""
    from pipelines.serving.engine import wait_ready

    work = workload(params, folder)
    port = _port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines", "serve", "--port", str(port),
                                 "--allow-unauthenticated"], cwd=folder, stdout=log, stderr=subprocess.STDOUT)
        try:
            try:
                wait_ready(url, timeout=300, proc=proc)
            except (RuntimeError, TimeoutError) as err:
                log.seek(0)
                tail = log.read().decode(errors="replace").strip().splitlines()[-1:]
                raise InputError(f"the server did not come up ({err}): {' '.join(tail)}") from None
            found = loadtest.capacity(url, loadtest.http_requests(url, work["path"], work["bodies"]),
                                      params.cost.latency_slo_p99_ms, levels, seconds)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    best = found["best"]
    if best and work["path"] == "/v1/chat/completions":
        work["api_input_tokens"] = round(best["prompt_tokens"] / best["requests"], 1)
        work["api_output_tokens"] = round(best["completion_tokens"] / best["requests"], 1)
    record = {"model": params.registry.model_name, "version": version, "alias": params.serve.alias,
              "host": host(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "route": work["path"], "requests_sent": len(work["bodies"]), "seconds_per_level": seconds,
              **found, "input_tokens_per_request": work.get("api_input_tokens"),
              "output_tokens_per_request": work.get("api_output_tokens"), "tokens_counted": work["tokens_counted"]}
    write_json(folder / CAPACITY_FILE, record)
    return record


def champion_of(name: str, folder: Path, params: Params) -> int | None:
    """The version the model's serving alias points at (its registry, relative to the model folder)."""
    from pipelines.registry import access
    from pipelines.registry import store as registry

    return registry.aliases(registry.read_ledger(access.model_store(params, name, folder))).get(params.serve.alias)


class _Best(BaseModel):
    model_config = ConfigDict(extra="allow")
    requests_per_s: float = Field(gt=0, allow_inf_nan=False)
    p99_ms: float = Field(ge=0, allow_inf_nan=False)
    concurrency: int = Field(ge=1)


class _Record(BaseModel):
    """What `cost.report` reads of a kept capacity record (more fields are allowed)."""

    model_config = ConfigDict(extra="allow")
    version: int
    best: _Best | None = None
    levels: list[dict[str, Any]] = []
    input_tokens_per_request: float | None = Field(None, ge=0, allow_inf_nan=False)
    output_tokens_per_request: float | None = Field(None, ge=0, allow_inf_nan=False)


def read_record(path: Path) -> dict[str, Any] | None:
    """The kept capacity record (None when none was measured); a damaged one is an InputError naming
    the file and the field, never a crash downstream."""
    import json

    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as err:
        raise InputError(f"{path}: unreadable ({type(err).__name__}); run pipelines cost --measure") from None
    try:
        _Record.model_validate(record)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the record"
        raise InputError(f"{path}: damaged capacity record ({where}: {first['msg']}); run pipelines cost --measure") \
            from None
    if record.get("best") and (record.get("input_tokens_per_request") is None
                               or record.get("output_tokens_per_request") is None):
        raise InputError(f"{path}: damaged capacity record (tokens per request missing); run pipelines cost --measure")
    return record


def report(name: str, folder: Path, params: Params, hardware: str | None = None, volume: float | None = None,
           measure_seconds: float | None = None) -> dict[str, Any]:
    """The champion's self-hosted cost against API prices (`economics.cost.report`), from its kept
    capacity record or, given `measure_seconds`, a new measurement; `unknown` with the reason otherwise."""
    cp = params.cost
    kind = hardware or cp.serve_on
    champion = champion_of(name, folder, params)
    if measure_seconds is not None and champion is not None:
        print(f"{name}: measuring v{champion} on loopback ({measure_seconds:g} s per load level) ...",
              file=sys.stderr, flush=True)
        record = measure(params, folder, champion, seconds=measure_seconds)
    else:
        record = read_record(folder / CAPACITY_FILE)
    api = {m: (cp.api[m].usd_per_1m_input, cp.api[m].usd_per_1m_output) for m in cp.compare_with}
    return cost.report(name, champion, record, kind, cp.hardware[kind].usd_per_hour, cp.hours_per_month, api,
                       volume or cp.monthly_requests)


def write_plot(folder: Path, doc: dict[str, Any]) -> Path:
    """The report's monthly bills against volume, kept beside the capacity record (atomic)."""
    from pipelines.core.dataio import atomic_write_bytes
    from pipelines.economics.plot import volume_svg

    atomic_write_bytes(folder / PLOT_FILE, volume_svg(doc))
    return folder / PLOT_FILE


def table(r: dict) -> str:
    """One model's comparison for people."""
    head = f"{r['model']} on {r['hardware']} (${r['usd_per_hour']:g}/h)"
    if "unknown" in r:
        return f"{head}: unknown: {r['unknown']}"
    m, c = r["measured"], r["capacity"]
    host = m["host"]
    lines = [f"{head}, champion v{r['champion']}: {c['requests_per_s']:g} requests/s at p99 {c['p99_ms']:g} ms "
             f"(objective {m['slo_p99_ms']:g} ms, {c['concurrency']} clients); measured {m['measured_at']} on "
             f"{host['cpu']} x{host['cores']}{' + ' + ', '.join(host['gpus']) if host['gpus'] else ''}",
             f"  a request: {m['input_tokens_per_request']:g} tokens in, {m['output_tokens_per_request']:g} out "
             f"({m['tokens_counted']})" + (
                 f"; self-hosted per 1M tokens: ${r['self_hosted']['usd_per_1m_tokens'] or 0:.4f} in+out, "
                 f"${r['self_hosted']['usd_per_1m_output_tokens'] or 0:.4f} out (prefill free)"
                 if m["route"] == "/v1/chat/completions" else ""),
             f"  {'API':<20}{'self $/1k req':>15}{'API $/1k req':>15}{'API/self':>10}{'break-even req/month':>22}"
             f"   at {r['monthly_requests']:,.0f} req/month: self-hosted vs API"]
    for row in r["rows"]:
        even = row["break_even_requests_per_month"]
        month = row["at_volume"]
        lines.append(f"  {row['api']:<20}{row['self_hosted_usd_per_1k']:>15.6f}{row['api_usd_per_1k']:>15.6f}"
                     f"{row['ratio']:>9.1f}x{(f'{even:,.0f}' if even is not None else 'never'):>22}"
                     f"   ${month['self_hosted_usd']:,.2f} ({month['machines']} machine(s)) vs ${month['api_usd']:,.2f}")
    return "\n".join(lines)
