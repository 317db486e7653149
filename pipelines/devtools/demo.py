"""The main job on the embedded default, orchestrated by Airflow: each model's `lifecycle__<model>`
DAG run with `airflow dags test` on a SQLite metadata DB (the text classifier twice: a first model,
then a challenger on a new weekly drop; every other model folder once), then each champion served
and its lineage verified.

Inputs: the project checkout (projects/<model>/ with params.yaml and dvc.yaml, dags/, .dvc/ with the
local default remote). Outputs, all git-ignored: the generated drops in `projects/<model>/data/raw/`,
`.airflow/` (metadata DB, logs, this machine's worker DVC cache and task workspaces), `registry/`
and the DVC remote `.dvc-storage/`; in git, refs only: `refs/runs/<model>/<run>` (each run's
commits) and the branch `lineage`. The checkout's files are never written by a run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipelines.core.config import Params, load_params
from pipelines.core.errors import CheckFailed, ConfigError
from pipelines.devtools import airflow_local
from pipelines.devtools.sample_data import write_sample
from pipelines.orchestration import records
from pipelines.registry import audit as lineage
from pipelines.tasks import task_spec

DEMO_ROWS = 2000
NEW_DROP_ROWS = 600
FIRST = "text-classifier"
# What the demo asks each served champion, by the model's sample domain.
QUESTIONS = {"banking": "my new card still has not arrived", "it_helpdesk": "I cannot connect to the VPN from home",
             "support_assistant": "Urgent: I lost my card last night and someone paid £240.00 at Tesco with it."}


def lifecycle_run(root: Path, model: str, conf: dict | None = None, label: str = "") -> dict:
    """One `airflow dags test lifecycle__<model>` run; returns its run record (what it decided and why)."""
    before = time.time()
    dag_id = f"lifecycle__{model}"
    _say(f"--- airflow dags test {dag_id} {label}".rstrip())
    done = airflow_local.dags_test(root, dag_id, conf or {})
    runs = records.list_runs(str(root), model, limit=1)
    record = dict(runs[0]) if runs and runs[0].get("started_at", 0) >= before else {}
    record["exit_code"] = done.returncode
    record["seconds"] = round(time.time() - before, 1)
    _say(f"run {record.get('run_id')}: exit {done.returncode} in {record['seconds']} s: {record.get('note')}")
    return record


def _models(root: Path) -> dict[str, Params]:
    return {p.parent.name: load_params(p, must_exist=True) for p in sorted((root / "projects").glob("*/params.yaml"))}


def run_demo(faulty_drop: bool = False, second_run: bool = True) -> dict:
    """Run every model's lifecycle DAG in the current checkout, serve each champion, verify its lineage."""
    root = Path.cwd()
    if not (root / "projects").is_dir() or not (root / ".dvc").is_dir() or not (root / "dags").is_dir():
        raise ConfigError("run the demo from the project root (projects/, dags/ and .dvc/ not found here)")
    models = _models(root)
    if FIRST not in models:
        raise ConfigError(f"the demo needs the model folder projects/{FIRST}/")
    airflow_local.setup(root)
    summary: dict = {"runs": [], "models": {}}
    for model, params in models.items():
        raw = root / "projects" / model / params.data.raw
        drop = write_sample(raw, rows=DEMO_ROWS, seed=0, domain=params.lifecycle.sample_domain)
        _say(f"sample drop for {model}: {drop.relative_to(root)} ({DEMO_ROWS} rows, deterministic)")
        first = lifecycle_run(root, model, label="(first model)")
        summary["runs"].append(_brief(model, first))
        if first["exit_code"] != 0 or not first.get("promotion"):
            raise CheckFailed(f"the first lifecycle run of {model} did not promote a model: {first.get('note')}")
        if second_run and model == FIRST:
            new = write_sample(raw, rows=NEW_DROP_ROWS, seed=1, domain=params.lifecycle.sample_domain)
            _say(f"new weekly drop: {new.relative_to(root)} ({NEW_DROP_ROWS} rows)")
            second = lifecycle_run(root, model, label="(challenger on the new drop)")
            summary["runs"].append(_brief(model, second))
            if second["exit_code"] != 0:
                raise CheckFailed(f"the second lifecycle run failed: {second.get('note')}")
        if faulty_drop and model == FIRST:
            summary["faulty_drop"] = _faulty_round(root, model, raw, params)
        summary["models"][model] = _verify_and_serve(root, model, params)
    _say(json.dumps(summary, indent=2))
    return summary


def _verify_and_serve(root: Path, model: str, params: Params) -> dict:
    folder = root / "projects" / model
    chain = lineage.trace(params, model, alias="champion", root=folder)
    for link in chain["links"]:
        _say(f"  lineage {link['status']:>8}  {link['step']:<15} {link['detail']}")
    if not chain["verified"]:
        raise CheckFailed(f"the lineage of {model}'s champion did not verify: {chain['links']}")
    return {"lineage": {"version": chain["version"], "verified": True, "branch": params.lineage.branch,
                        "runs": f"refs/runs/{model}/", "remote": _remote_url(root)},
            "served": _serve_once(folder, params)}


def _brief(model: str, record: dict) -> dict:
    snap = record.get("snapshot") or {}
    return {"model": model, "run_id": record.get("run_id"), "exit_code": record.get("exit_code"),
            "seconds": record.get("seconds"), "data": {"files": len(snap.get("files", [])), "md5": snap.get("md5")},
            "stages": {k: ("ran" if v.get("ran") else "cached") for k, v in (record.get("stages") or {}).items()},
            "gate": {k: (record.get("gate") or {}).get(k) for k in ("passed", "summary", "reasons")},
            "promotion": record.get("promotion"), "lineage_commit": record.get("lineage_commit"),
            "note": record.get("note")}


def _faulty_round(root: Path, model: str, raw: Path, params: Params) -> dict:
    """Add a faulty drop, show the DAG stopping at validate (nothing promoted), then remove it."""
    bad = write_sample(raw, rows=300, seed=7, faulty=True, domain=params.lifecycle.sample_domain)
    try:
        record = lifecycle_run(root, model, label="(faulty drop)")
        return {"path": str(bad.relative_to(root)), "exit_code": record["exit_code"], "note": record.get("note")}
    finally:
        bad.unlink(missing_ok=True)


def _serve_once(folder: Path, params: Params) -> dict:
    """Start the real server on a free loopback port, ask it one request of each kind it supports."""
    import socket

    import httpx

    from pipelines.serving.engine import wait_ready

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PIPELINES_API_KEYS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines", "serve", "--port", str(port)], cwd=folder, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(url, timeout=180, proc=proc)
        except (RuntimeError, TimeoutError) as err:
            raise CheckFailed(f"the demo server did not come up: {err}") from None
        answers = {}
        text = QUESTIONS[params.lifecycle.sample_domain]
        if task_spec(params.data.task).labelled:
            r = httpx.post(f"{url}/v1/classify", json={"texts": [text]}, timeout=60)
            answers["classify"] = r.json()["results"][0] | {"text": text, "model_version": r.json()["model_version"]}
        else:
            r = httpx.post(f"{url}/v1/chat/completions", timeout=180,
                           json={"messages": [{"role": "user", "content": text}], "max_tokens": 96})
            answers["chat"] = r.json()["choices"][0]["message"] | {"asked": text,
                                                                   "model_version": r.json()["model_version"]}
        _say(f"served {params.registry.model_name} v{r.json()['model_version']} on {url}: {answers}")
        return answers
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _remote_url(root: Path) -> str:
    from pipelines.orchestration.runspace import Shared, dvc_remote_url

    return dvc_remote_url(Shared(str(root), "", ""), root)[1]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
