"""A load run against a real server on loopback: N clients, each on one keep-alive connection, send
requests back to back for a fixed time (`drive`); `capacity` raises N until the p99 latency passes an
objective and keeps the level with the most requests per second that met it. Used by `pipelines cost`
and `benchmarks/serve_throughput.py`.

A minimal raw-socket HTTP/1.1 client rather than httpx: on 2 cores the load generator shares the CPU
with the server, and httpx spent more CPU per request than the batched server did, so it measured the
client. Requests are pre-encoded; each response's status is read and, when the body carries OpenAI
`usage`, its token counts are added up.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import numpy as np

LEVELS = (1, 2, 4, 8, 16, 32)


def http_requests(url: str, path: str, bodies: list[dict[str, Any]], api_key: str | None = None) -> list[bytes]:
    """Each JSON body as a complete HTTP/1.1 POST to `path` of `url` (http://host:port)."""
    host = url.removeprefix("http://").rstrip("/")
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    out = []
    for body in bodies:
        data = json.dumps(body).encode()
        out.append((f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}"
                    f"Content-Length: {len(data)}\r\n\r\n").encode() + data)
    return out


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    body = await reader.readexactly(int(length.group(1))) if length else b""
    return int(head[9:12]), body


def _usage(body: bytes) -> tuple[int, int]:
    if b'"usage"' not in body:
        return 0, 0
    usage = json.loads(body).get("usage") or {}
    return int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))


async def _drive(url: str, requests: list[bytes], concurrency: int, seconds: float) -> dict[str, Any]:
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    latencies: list[float] = []
    counts = {"errors": 0, "prompt_tokens": 0, "completion_tokens": 0}
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        n = 0
        try:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                status, body = await _exchange(reader, writer, requests[(i + n) % len(requests)])
                n += 1
                if status != 200:
                    counts["errors"] += 1
                    continue
                latencies.append(time.perf_counter() - t)
                used_in, used_out = _usage(body)
                counts["prompt_tokens"] += used_in
                counts["completion_tokens"] += used_out
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - t0
    lat = np.array(latencies or [float("nan")]) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            **counts}


def drive(url: str, requests: list[bytes], concurrency: int, seconds: float) -> dict[str, Any]:
    """N clients for `seconds`: requests/s, p50/p99 latency (ms) of the answered ones, errors, tokens used."""
    if not requests:
        raise ValueError("no requests to send")
    return asyncio.run(_drive(url, requests, concurrency, seconds))


def met(run: dict[str, Any], slo_p99_ms: float) -> bool:
    return run["requests"] > 0 and run["errors"] == 0 and run["p99_ms"] <= slo_p99_ms


def capacity(url: str, requests: list[bytes], slo_p99_ms: float, levels: tuple[int, ...] = LEVELS,
             seconds: float = 5.0) -> dict[str, Any]:
    """Every level tried (in order, stopping at the first that misses the objective) and the best that
    met it (None when even one client at a time misses it)."""
    drive(url, requests, 2, min(2.0, seconds))  # warm-up: first batches, allocator, caches
    runs = []
    for level in levels:
        runs.append(drive(url, requests, level, seconds))
        if not met(runs[-1], slo_p99_ms):
            break
    good = [r for r in runs if met(r, slo_p99_ms)]
    return {"slo_p99_ms": slo_p99_ms, "levels": runs,
            "best": max(good, key=lambda r: r["requests_per_s"]) if good else None}
