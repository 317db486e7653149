"""A throw-away copy of this project as its own git + DVC repo, for running the real DAGs on it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipelines.devtools import airflow_local
from tests.conftest import ROOT, cli_env

GIT_ID = ["-c", "user.name=test", "-c", "user.email=test@example.com"]
MODELS = {"text-classifier": "banking", "it-helpdesk": "it_helpdesk", "support-assistant": "support_assistant"}


def sh(*args, cwd, check=True, timeout=900, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env or cli_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def project_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return [f for f in out if f and ((ROOT / f).is_file() or (ROOT / f).is_symlink())]


def ci_sized(repo: Path, model: str, **params_update) -> None:
    """Make a model's training CI-sized and its gate lenient (tests tighten it per run)."""
    path = repo / "projects" / model / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["train"].update(epochs=2, max_length=32, checkpoint_every=20)
    params["evaluate"].update(latency_samples=5)
    params["gate"].update(min_accuracy=0.3, min_macro_f1=0.2, min_class_recall=None, max_p95_latency_ms=None,
                          max_latency_ratio=None)
    for section, values in params_update.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_project(tmp: Path, rows: int = 600, models: tuple[str, ...] = ("text-classifier",), **params_update) -> Path:
    """Copy the project's files, make training CI-sized, commit, and write one sample drop per model
    (`models`; the other model folders are removed)."""
    repo = tmp / "project"
    for rel in project_files():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / rel).is_symlink():
            (repo / rel).symlink_to((ROOT / rel).readlink())
        else:
            shutil.copy2(ROOT / rel, repo / rel)
    for folder in (repo / "projects").iterdir():
        if folder.name not in models:
            shutil.rmtree(folder)
    for model in models:
        ci_sized(repo, model, **params_update)
    airflow_local.registry_keys(repo)  # the signed registry's key pair, as the embedded default's set-up makes it
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", *GIT_ID, "commit", "-qm", "project under test", cwd=repo)
    for model in models:
        drop(repo, model, rows=rows, seed=0)
    return repo


def drop(repo: Path, model: str, rows: int, seed: int, faulty: bool = False) -> Path:
    """A new sample drop in the model's default dataset directory (in the user's checkout)."""
    args = ["--model", model, "sample", "--out", "data/raw", "--rows", rows, "--seed", seed, "--domain", MODELS[model]]
    out = pipelines(repo, *args, *(["--faulty"] if faulty else [])).stderr.strip().split()[-1]
    return repo / "projects" / model / out


def airflow_env(repo: Path, **extra: str) -> dict[str, str]:
    return {**airflow_local.env(repo), **extra}


def pipelines(repo: Path, *args, check=True) -> subprocess.CompletedProcess:
    return sh(sys.executable, "-m", "pipelines", *args, cwd=repo, check=check, env={**cli_env(), "HF_HUB_OFFLINE": "1"})


def dags_test(repo: Path, dag_id: str, conf: dict | None = None) -> subprocess.CompletedProcess:
    return sh(Path(sys.executable).parent / "airflow", "dags", "test", dag_id, "-c", json.dumps(conf or {}),
              cwd=repo, check=False, env=airflow_env(repo))


def run_refs(repo: Path, model: str) -> list[str]:
    out = sh("git", "for-each-ref", "--sort=committerdate", "--format=%(refname)", f"refs/runs/{model}/", cwd=repo)
    return out.stdout.split()


def last_record(repo: Path, model: str = "text-classifier") -> dict:
    """The record of the model's newest run, read from its run ref in the repository."""
    refs = run_refs(repo, model)
    if not refs:
        return {}
    return json.loads(sh("git", "show", f"{refs[-1]}:lineage/run.json", cwd=repo).stdout)


def user_state(repo: Path) -> tuple[str, str]:
    """What a run must never change in the user's checkout: HEAD and `git status`."""
    head = sh("git", "rev-parse", "HEAD", cwd=repo).stdout.strip()
    status = sh("git", "status", "--porcelain", "--ignored=no", cwd=repo).stdout
    return head, status
