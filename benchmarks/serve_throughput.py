"""Serving throughput: dynamic micro-batching against one-request-one-forward, same server and model.

Builds a registry with the champion trained by the demo if there is one (`registry/` under the
project), otherwise a quickly trained MiniLM classifier, then starts the real server on loopback
twice in this run, with batching and with `--no-batching`, and drives each with N concurrent
clients (1, 8, 32) sending single-text `/v1/classify` requests for a fixed time. Prints figures per
mode and concurrency, then one JSON object as the last line with requests/s, p50/p99 latency and
`speedup_c32`, `p99_ms_c32`, `naive_p99_ms_c32`.
Target at concurrency 32: >= 4x the naive throughput with p99 below the naive p99.

    python benchmarks/serve_throughput.py [--seconds 15]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TEXTS = ["my card has not arrived yet", "I was charged twice at the shop", "how do I change my pin",
         "the transfer to my friend never arrived", "why was my payment declined", "close my account please",
         "what exchange rate do you use for euros", "apple pay stopped working this morning"]


async def _post(reader, writer, request: bytes) -> int:
    """One keep-alive HTTP/1.1 exchange; returns the status code (body read and dropped)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    await reader.readexactly(length)
    return status


async def drive(url: str, concurrency: int, seconds: float) -> dict:
    """N clients, each on one keep-alive connection, send requests back to back for `seconds`.

    A minimal raw-socket client rather than httpx: on 2 cores the load generator shares the CPU
    with the server, and httpx spent more CPU per request than the batched server did, so it
    measured the client. The requests are pre-encoded; each response's status and length are parsed.
    """
    host, port = url.removeprefix("http://").split(":")
    bodies = [json.dumps({"texts": [t]}).encode() for t in TEXTS]
    requests = [(f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        n = 0
        try:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                status = await _post(reader, writer, requests[(i + n) % len(requests)])
                n += 1
                if status == 200:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"rps": round(len(latencies) / elapsed, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1), "errors": errors, "requests": len(latencies)}


def registry_root(tmp: Path) -> Path:
    if (ROOT / "registry" / "text-classifier" / "ledger.jsonl").exists():
        from pipelines.registry import store as registry

        store = registry.open_store(str(ROOT / "registry"), "text-classifier")
        if registry.aliases(registry.read_ledger(store)).get("champion"):
            return ROOT / "registry"
    from tests.serving_support import build_registry

    build_registry(tmp, "classification", versions=1)
    return tmp / "registry"


def serve(root: Path, port: int, batching: bool, workdir: Path) -> subprocess.Popen:
    (workdir / "params.yaml").write_text(yaml.safe_dump({"registry": {"root": str(root)},
                                                         "serve": {"port": port, "max_queue": 1024}}))
    cmd = [sys.executable, "-m", "pipelines", "serve"] + ([] if batching else ["--no-batching"])
    return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    from pipelines.serving.engine import wait_ready
    from tests.serving_support import free_port

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = registry_root(tmp)
        for mode, batching in (("batched", True), ("naive", False)):
            port = free_port()
            proc = serve(root, port, batching, tmp)
            url = f"http://127.0.0.1:{port}"
            try:
                wait_ready(url, timeout=180, proc=proc)
                asyncio.run(drive(url, 4, 2.0))  # warm-up
                for c in (1, 8, 32):
                    results[f"{mode}_c{c}"] = asyncio.run(drive(url, c, args.seconds))
                    print(f"{mode} c={c}: {results[f'{mode}_c{c}']}", file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    out = {k: v for k, v in results.items()}
    out["speedup_c32"] = round(results["batched_c32"]["rps"] / results["naive_c32"]["rps"], 2)
    out["p99_ms_c32"] = results["batched_c32"]["p99_ms"]
    out["naive_p99_ms_c32"] = results["naive_c32"]["p99_ms"]
    out["target_met"] = out["speedup_c32"] >= 4 and out["p99_ms_c32"] < out["naive_p99_ms_c32"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
