"""The load run against a small in-process server whose latency grows with the requests in flight:
levels rise until p99 misses the objective, the best level that met it is kept, tokens are summed."""
from __future__ import annotations

import asyncio

from fastapi import FastAPI

from pipelines.serving import loadtest
from tests.serving_support import start_loopback


def _app() -> FastAPI:
    app = FastAPI()
    state = {"in_flight": 0}

    @app.post("/v1/chat/completions")
    async def answer(body: dict):
        state["in_flight"] += 1
        try:
            await asyncio.sleep(0.04 * state["in_flight"])  # each request waits behind the others
        finally:
            state["in_flight"] -= 1
        return {"usage": {"prompt_tokens": 7, "completion_tokens": 3}}

    return app


def test_capacity_rises_until_p99_misses_the_objective_and_keeps_the_best_level():
    server, url = start_loopback(_app())
    try:
        requests = loadtest.http_requests(url, "/v1/chat/completions", [{"n": i} for i in range(4)])
        found = loadtest.capacity(url, requests, slo_p99_ms=150, levels=(1, 2, 8, 16), seconds=0.6)
    finally:
        server.should_exit = True
    tried = [lv["concurrency"] for lv in found["levels"]]
    assert tried == [1, 2, 8]  # 8 in flight wait ~320 ms: past the objective, so 16 is never tried
    assert not loadtest.met(found["levels"][-1], 150)
    best = found["best"]
    assert best["concurrency"] in (1, 2) and best["p99_ms"] <= 150
    assert best["prompt_tokens"] == 7 * best["requests"] and best["completion_tokens"] == 3 * best["requests"]


def test_errors_count_against_the_objective():
    run = {"requests": 10, "errors": 1, "p99_ms": 5.0}
    assert not loadtest.met(run, 100) and loadtest.met({**run, "errors": 0}, 100)
    assert not loadtest.met({"requests": 0, "errors": 0, "p99_ms": float("nan")}, 100)


def test_requests_are_complete_http_posts():
    raw, = loadtest.http_requests("http://127.0.0.1:9", "/v1/classify", [{"texts": ["hi"]}], api_key="k")
    head, body = raw.split(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1:9\r\n")
    assert b"Authorization: Bearer k" in head and f"Content-Length: {len(body)}".encode() in head
    assert body == b'{"texts": ["hi"]}'
