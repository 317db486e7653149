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
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TEXTS = ["my card has not arrived yet", "I was charged twice at the shop", "how do I change my pin",
         "the transfer to my friend never arrived", "why was my payment declined", "close my account please",
         "what exchange rate do you use for euros", "apple pay stopped working this morning"]


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
    from pipelines.serving.loadtest import drive, http_requests
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
                requests = http_requests(url, "/v1/classify", [{"texts": [t]} for t in TEXTS])
                drive(url, requests, 4, 2.0)  # warm-up
                for c in (1, 8, 32):
                    results[f"{mode}_c{c}"] = drive(url, requests, c, args.seconds)
                    print(f"{mode} c={c}: {results[f'{mode}_c{c}']}", file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    out = {k: v for k, v in results.items()}
    out["speedup_c32"] = round(results["batched_c32"]["requests_per_s"] / results["naive_c32"]["requests_per_s"], 2)
    out["p99_ms_c32"] = results["batched_c32"]["p99_ms"]
    out["naive_p99_ms_c32"] = results["naive_c32"]["p99_ms"]
    out["target_met"] = out["speedup_c32"] >= 4 and out["p99_ms_c32"] < out["naive_p99_ms_c32"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
