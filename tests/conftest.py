"""Shared fixtures: repo paths, the shared banking77 data, and a CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BANKING77 = SHARED / "banking77" / "train.csv"

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="session")
def banking77() -> Path:
    if not BANKING77.exists():
        pytest.skip(f"shared dataset absent: {BANKING77} (tests read it from ../shared/data)")
    return BANKING77


def cli_env() -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "GX_ANALYTICS_ENABLED": "False", "DVC_NO_ANALYTICS": "1"}


@pytest.fixture
def run_cli():
    """Run `python -m pipelines ...` in a directory; return the CompletedProcess."""
    def _run(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipelines", *map(str, args)], cwd=cwd, env=cli_env(),
                              capture_output=True, text=True, timeout=timeout)
    return _run
