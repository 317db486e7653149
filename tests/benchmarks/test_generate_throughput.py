"""The generation serving benchmark in smoke mode (tiny model, short windows), so it never rots; its
figures are read from a real run, not asserted here (timings are not tests)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_generate_benchmark_smoke_drives_both_servers():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "generate_throughput.py"), "--tiny",
                          "--seconds", "2", "--concurrency", "1", "8"], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    for mode in ("batched", "naive"):
        for c in (1, 8):
            figures = result[f"{mode}_c{c}"]
            assert figures["errors"] == 0 and figures["requests"] > 0 and figures["output_tokens_per_s"] > 0
            assert 0 < figures["p50_ttft_ms"] <= figures["p99_ttft_ms"]
    assert {"speedup_c8", "p99_ttft_ms_c8", "naive_p99_ttft_ms_c8", "target_met"} <= set(result)
