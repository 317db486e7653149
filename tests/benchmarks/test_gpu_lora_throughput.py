"""The GPU throughput benchmark in smoke mode (tiny model, CPU), so it never rots between GPU runs."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_gpu_benchmark_smoke_runs_the_same_code_on_cpu():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_lora_throughput.py"), "--smoke"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    variants = result["variants"]
    cpu = {"baseline", "padfree_sdpa", "dense_sdpa_memory", "padfree_sdpa_memory"}
    assert {k for k, v in variants.items() if v["status"] == "ok"} == cpu
    assert all(v["status"] == "skipped" and v["why"] == "needs CUDA" for k, v in variants.items() if k not in cpu)
    for name in ("padfree_sdpa", "padfree_sdpa_memory"):  # the same function as the old path, in fp32
        assert variants[name]["loss_rel_err"] < 1e-5 and variants[name]["grad_rel_err"] < 1e-4
        assert variants[name]["tokens_per_s"] > 0
    assert result["train_stage"] == {**result["train_stage"], "device": "cpu", "dtype": "float32", "ok": True}
    assert 0.5 < result["packing_fill"] <= 1.0
