"""A throw-away copy of this project as its own git + DVC repo, for running the real DAGs on it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT, cli_env

GIT_ID = ["-c", "user.name=test", "-c", "user.email=test@example.com"]


def sh(*args, cwd, check=True, timeout=900, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env or cli_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def project_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return [f for f in out if f and (ROOT / f).is_file()]


def make_project(tmp: Path, rows: int = 600, **params_update) -> Path:
    """Copy the project's files, make training CI-sized, commit, and write one sample drop."""
    repo = tmp / "project"
    for rel in project_files():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, repo / rel)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(epochs=2, max_length=32, checkpoint_every=20)
    params["evaluate"].update(latency_samples=5)
    params["gate"].update(min_accuracy=0.3, min_macro_f1=0.2, min_class_recall=None, max_p95_latency_ms=None)
    for section, values in params_update.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", *GIT_ID, "commit", "-qm", "project under test", cwd=repo)
    sh(sys.executable, "-m", "pipelines", "sample", "--out", "data/raw", "--rows", rows, cwd=repo)
    return repo


def airflow_env(repo: Path, **extra: str) -> dict[str, str]:
    from pipelines import airflow_local

    return {**airflow_local.env(repo), **extra}


def pipelines(repo: Path, *args, check=True) -> subprocess.CompletedProcess:
    return sh(sys.executable, "-m", "pipelines", *args, cwd=repo, check=check, env={**cli_env(), "HF_HUB_OFFLINE": "1"})


def dags_test(repo: Path, dag_id: str, conf: dict | None = None) -> subprocess.CompletedProcess:
    import json

    return sh(Path(sys.executable).parent / "airflow", "dags", "test", dag_id, "-c", json.dumps(conf or {}),
              cwd=repo, check=False, env=airflow_env(repo))


def last_record(repo: Path) -> dict:
    import json

    runs = sorted((repo / ".lifecycle" / "runs").glob("*.json"), key=os.path.getmtime)
    return json.loads(runs[-1].read_text()) if runs else {}
