"""Run outputs must never be committed on main: the demo's promise is that it modifies no tracked file."""
import subprocess

import pytest

from tests.conftest import ROOT

RUN_OUTPUTS = ("dvc.lock", "data/raw.dvc", "data/raw", "data/prepared", "models/candidate", "registry",
               "reports", "checkpoints", ".dvc-storage", ".dvc/cache")


def tracked() -> list[str]:
    proc = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip("not a git checkout")
    return proc.stdout.splitlines()


@pytest.mark.parametrize("output", RUN_OUTPUTS)
def test_run_outputs_are_not_tracked(output):
    assert not [f for f in tracked() if f == output or f.startswith(output + "/")]
