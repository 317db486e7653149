"""The training benchmark's race against TRL's SFTTrainer in smoke mode (a few SmolLM2 steps), so the
baseline's wiring never rots; its figures come from a real run, not from here (timings are not tests)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.slow
def test_smollm2_against_trl_trains_both_on_the_same_tokens():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--only-smollm2",
                          "--smollm2", "16"], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    detail = json.loads(next(line for line in run.stderr.splitlines() if line.startswith("smollm2: "))[9:])
    ours, trl = detail["ours"], detail["trl"]
    # Same rows, same tokens: both trainers saw every token of the 16 answers once.
    assert ours["seconds"] * ours["tokens_per_s"] == pytest.approx(trl["seconds"] * trl["tokens_per_s"], rel=0.02)
    assert trl["optimizer_steps"] >= 1
    for key in ("smollm2_eval_loss", "smollm2_trl_eval_loss"):
        assert 0 < result[key] < 10  # a trained chat model on its own answer format, not a broken loss
    assert result["smollm2_vs_trl_speedup"] > 0
