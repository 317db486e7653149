"""Registries with real trained versions for the serving tests (MiniLM classifier, tiny Llama)."""
from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pandas as pd

from pipelines.core.config import parse_params
from pipelines.registry import store as registry
from pipelines.stages.train import train
from pipelines.training.modeling import candidate_hash

INTENTS = {"card_arrival": "my new card has not arrived yet", "refund_request": "I want my money back for order",
           "change_pin": "how do I change the pin of my card"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_loopback(app):
    """Run an ASGI app with uvicorn in a thread on a free loopback port; return (server, url)."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{port}"


class FakeUpstream:
    """An OpenAI-compatible upstream on loopback (the frontier API's stand-in: none runs here) that
    answers a fixed label or `answer(request body)`, or fails on demand."""

    def __init__(self, answer):
        from fastapi import FastAPI, HTTPException

        self.answer, self.fail, self.calls = answer, False, []
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(body: dict):
            self.calls.append(body)
            if self.fail:
                raise HTTPException(500, "boom")
            content = self.answer(body) if callable(self.answer) else self.answer
            return {"id": "x", "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}

        self.server, self.url = start_loopback(app)

    def stop(self):
        self.server.should_exit = True


def _prepared(root: Path, task: str) -> Path:
    out = root / "prepared"
    out.mkdir(parents=True, exist_ok=True)
    if task == "classification":
        rows = [{"text": f"{text} {i}", "label": lab} for lab, text in INTENTS.items() for i in range(12)]
        (out / "label_map.json").write_text(json.dumps({lab: i for i, lab in enumerate(sorted(INTENTS))}))
    else:
        rows = [{"prompt": f"question {i}: what is {i} plus {i}?", "response": f"answer: it is {2 * i}."}
                for i in range(24)]
    frame = pd.DataFrame(rows)
    for split in ("train", "validation", "test"):
        frame.to_parquet(out / f"{split}.parquet", index=False)
    return out


def build_registry(root: Path, task: str, versions: int, base_model: str = "minilm", max_length: int = 32) -> dict:
    """Train `versions` small candidates and register them (v1 promoted to champion).

    Returns paths of every candidate and its passing decision, for promotions in the tests."""
    model = "text-classifier" if task == "classification" else "text-gen"
    store = registry.open_store(str(root / "registry"), model)
    registry.init(store)
    prepared = _prepared(root / "work", task)
    candidates = []
    for i in range(versions):
        params = parse_params({
            "data": {"task": task}, "prepare": {"output_dir": str(prepared)},
            "train": {"base_model": base_model, "output_dir": str(root / "work" / "model"), "max_steps": 3 + i,
                      "max_length": max_length, "batch_size": 8, "seed": i, "checkpoint_dir": str(root / "work" / "ckpt"),
                      "report_dir": str(root / "work" / "reports")}})
        train(params, resume=False)
        cand = root / f"cand{i + 1}"
        shutil.copytree(root / "work" / "model", cand)
        decision = root / f"cand{i + 1}.decision.json"
        decision.write_text(json.dumps({"candidate_hash": candidate_hash(cand), "passed": True, "rules": []}))
        candidates.append((cand, decision))
    registry.promote(store, model, *candidates[0], None, reason="first")
    return {"store": store, "model": model, "candidates": candidates, "root": root}
