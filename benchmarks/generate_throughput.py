"""Generation serving throughput: batched generation against one request at a time, same server code,
same model, in the same run.

Serves the support assistant the demo promoted (`registry/support-assistant`, SmolLM2-135M + LoRA) if
there is one, else a SmolLM2 adapter trained for a few steps here (`--tiny`: a tiny random Llama, for
a smoke run). Starts the real server on loopback twice, batched and `--no-batching` (every generation
alone through `generate`), and drives each with N concurrent clients (1, 8, 32) sending streamed greedy
`/v1/chat/completions` requests (`stream_options.include_usage`) back to back for a fixed time. Per
request: time to the first streamed token (TTFT) and output tokens (the usage chunk). Prints figures
per mode and concurrency, then one JSON object as the last line: output tokens/s, p50/p99 TTFT,
`speedup_c8`, `p99_ttft_ms_c8` against the naive server's.
Target at concurrency 8: >= 3x the naive output tokens/s with a lower p99 TTFT.

    python benchmarks/generate_throughput.py [--seconds 30] [--max-tokens 48] [--tiny]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MESSAGES = ["Urgent: I lost my card last night and someone paid £240.00 at Tesco with it.",
            "My transfer of €120 to my landlord has not arrived after three days.",
            "How do I change my PIN?", "Why was I charged 2.50 GBP for taking out cash?",
            "I want a refund for order AB-1234, the shoes never came.",
            "Apple Pay stopped working on my phone this morning.",
            "Please close my account, I am moving abroad.", "Which exchange rate do you use for dollars?"]


async def _stream_once(host: str, port: int, body: bytes) -> tuple[float, int]:
    """One streamed request on a fresh connection: (seconds to the first content chunk, output tokens)."""
    reader, writer = await asyncio.open_connection(host, port)
    t = time.perf_counter()
    writer.write((f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
    ttft, tokens = None, 0
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if head[9:12] != b"200":
            raise RuntimeError(head[:200])
        while line := await reader.readline():
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if ttft is None and event["choices"] and event["choices"][0].get("delta", {}).get("content"):
                ttft = time.perf_counter() - t
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    finally:
        writer.close()
    return (ttft if ttft is not None else time.perf_counter() - t), tokens


async def drive(url: str, concurrency: int, seconds: float, max_tokens: int) -> dict:
    """N clients send streamed requests back to back for `seconds`; tokens/s over the whole window."""
    host, port = url.removeprefix("http://").split(":")
    bodies = [json.dumps({"messages": [{"role": "user", "content": m}], "max_tokens": max_tokens, "stream": True,
                          "stream_options": {"include_usage": True}}).encode() for m in MESSAGES]
    ttfts: list[float] = []
    tokens = errors = 0
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        nonlocal tokens, errors
        n = 0
        while time.perf_counter() < stop:
            try:
                first, made = await _stream_once(host, int(port), bodies[(i + n) % len(bodies)])
                ttfts.append(first)
                tokens += made
            except (RuntimeError, OSError):
                errors += 1
            n += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - t0
    lat = np.array(ttfts or [float("nan")]) * 1000
    return {"output_tokens_per_s": round(tokens / elapsed, 2), "requests": len(ttfts), "errors": errors,
            "p50_ttft_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ttft_ms": round(float(np.percentile(lat, 99)), 1)}


def registry_root(tmp: Path, tiny: bool) -> tuple[Path, str]:
    from pipelines.registry import store as registry

    if not tiny and (ROOT / "registry" / "support-assistant" / "ledger.jsonl").exists():
        store = registry.open_store(str(ROOT / "registry"), "support-assistant")
        if registry.aliases(registry.read_ledger(store)).get("champion"):
            return ROOT / "registry", "support-assistant"
    from tests.serving_support import build_registry

    base = "smollm2"
    if tiny:
        from tests.tiny_models import build_causal

        base = str(build_causal("llama", tmp / "tiny"))
    built = build_registry(tmp, "causal_lm", versions=1, base_model=base, max_length=32 if tiny else 96)
    return built["root"] / "registry", "text-gen"


def serve(root: Path, model: str, port: int, batching: bool, workdir: Path) -> subprocess.Popen:
    (workdir / "params.yaml").write_text(yaml.safe_dump({
        "data": {"task": "causal_lm"}, "registry": {"root": str(root), "model_name": model},
        "serve": {"port": port, "max_queue": 1024, "max_tokens": 512, "request_timeout_s": 600}}))
    cmd = [sys.executable, "-m", "pipelines", "serve"] + ([] if batching else ["--no-batching"])
    return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    from pipelines.serving.engine import wait_ready
    from tests.serving_support import free_port

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (smoke run)")
    args = parser.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root, model = registry_root(tmp, args.tiny)
        for mode, batching in (("batched", True), ("naive", False)):
            port = free_port()
            proc = serve(root, model, port, batching, tmp)
            url = f"http://127.0.0.1:{port}"
            try:
                wait_ready(url, timeout=300, proc=proc)
                asyncio.run(drive(url, 2, 3.0, args.max_tokens))  # warm-up
                for c in args.concurrency:
                    results[f"{mode}_c{c}"] = asyncio.run(drive(url, c, args.seconds, args.max_tokens))
                    print(f"{mode} c={c}: {results[f'{mode}_c{c}']}", file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    out: dict = {"model": model, "max_tokens": args.max_tokens, "seconds": args.seconds, **results}
    key = "c8" if "batched_c8" in results else f"c{args.concurrency[-1]}"
    out[f"speedup_{key}"] = round(results[f"batched_{key}"]["output_tokens_per_s"]
                                  / max(results[f"naive_{key}"]["output_tokens_per_s"], 1e-9), 2)
    out[f"p99_ttft_ms_{key}"] = results[f"batched_{key}"]["p99_ttft_ms"]
    out[f"naive_p99_ttft_ms_{key}"] = results[f"naive_{key}"]["p99_ttft_ms"]
    out["target_met"] = out[f"speedup_{key}"] >= 3 and out[f"p99_ttft_ms_{key}"] < out[f"naive_p99_ttft_ms_{key}"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
