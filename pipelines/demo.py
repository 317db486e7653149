"""The main job on the embedded default, orchestrated by Airflow: the `model_lifecycle` DAG run with
`airflow dags test` on a SQLite metadata DB, twice (a first model, then a challenger on a new weekly
drop), then the champion served and its lineage verified.

Inputs: the project checkout (dvc.yaml, params.yaml, dags/, .dvc/ with the local default remote).
Outputs, all git-ignored except two DVC lineage files and one branch: `data/raw/` (generated drops),
`data/raw.dvc` and `dvc.lock` (yours to commit), the branch `lineage` (one commit per run),
`.airflow/` (metadata DB, logs), `.lifecycle/` (run records), `data/prepared/`, `models/candidate/`,
`checkpoints/`, `reports/`, `registry/`, `.dvc/cache/` and the remote `.dvc-storage/`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipelines import airflow_local, lifecycle, lineage
from pipelines.config import load_params
from pipelines.errors import CheckFailed, ConfigError
from pipelines.sample_data import write_sample

DEMO_ROWS = 2000
NEW_DROP_ROWS = 600


def lifecycle_run(root: Path, conf: dict | None = None, label: str = "") -> dict:
    """One `airflow dags test model_lifecycle` run; returns its run record (what it decided and why)."""
    before = time.time()
    _say(f"--- airflow dags test model_lifecycle {label}".rstrip())
    done = airflow_local.dags_test(root, "model_lifecycle", conf or {})
    records = sorted((root / lifecycle.STATE / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    record = json.loads(records[-1].read_text(encoding="utf-8")) if records else {}
    if not records or records[-1].stat().st_mtime < before:
        record = {}
    record["exit_code"] = done.returncode
    record["seconds"] = round(time.time() - before, 1)
    _say(f"run {record.get('run_id')}: exit {done.returncode} in {record['seconds']} s: {record.get('note')}")
    return record


def run_demo(faulty_drop: bool = False, second_run: bool = True) -> dict:
    """Run the lifecycle DAG in the current checkout (twice), serve the champion, verify its lineage."""
    if not Path("dvc.yaml").exists() or not Path(".dvc").is_dir() or not Path("dags").is_dir():
        raise ConfigError("run the demo from the project root (dvc.yaml, dags/ and .dvc/ not found here)")
    root = Path.cwd()
    params = load_params()
    raw = Path(params.data.raw)
    drop = write_sample(raw, rows=DEMO_ROWS, seed=0)
    _say(f"sample drop: {drop} ({DEMO_ROWS} rows, deterministic)")
    airflow_local.setup(root)
    summary: dict = {"runs": []}
    first = lifecycle_run(root, label="(first model)")
    summary["runs"].append(_brief(first))
    if first["exit_code"] != 0 or not first.get("promotion"):
        raise CheckFailed(f"the first lifecycle run did not promote a model: {first.get('note')}")
    if second_run:
        new = write_sample(raw, rows=NEW_DROP_ROWS, seed=1)
        _say(f"new weekly drop: {new} ({NEW_DROP_ROWS} rows)")
        second = lifecycle_run(root, label="(challenger on the new drop)")
        summary["runs"].append(_brief(second))
        if second["exit_code"] != 0:
            raise CheckFailed(f"the second lifecycle run failed: {second.get('note')}")
    if faulty_drop:
        summary["faulty_drop"] = _faulty_round(root, raw)
    chain = lineage.trace(load_params(), params.registry.model_name, alias="champion")
    for link in chain["links"]:
        _say(f"  lineage {link['status']:>8}  {link['step']:<13} {link['detail']}")
    if not chain["verified"]:
        raise CheckFailed(f"the champion's lineage did not verify: {chain['links']}")
    summary["lineage"] = {"version": chain["version"], "verified": chain["verified"],
                          "branch": first.get("lineage_branch"), "dvc.lock": "dvc.lock", "raw": f"{raw}.dvc",
                          "remote": _remote_url()}
    summary["served"] = _serve_once(params)
    _say(json.dumps(summary, indent=2))
    return summary


def _brief(record: dict) -> dict:
    snap = record.get("snapshot") or {}
    return {"run_id": record.get("run_id"), "exit_code": record.get("exit_code"), "seconds": record.get("seconds"),
            "data": {"files": len(snap.get("files", [])), "md5": snap.get("md5")},
            "gate": {k: (record.get("gate") or {}).get(k) for k in ("passed", "summary", "reasons")},
            "promotion": record.get("promotion"), "lineage_commit": record.get("lineage_commit"),
            "note": record.get("note")}


def _faulty_round(root: Path, raw: Path) -> dict:
    """Add a faulty drop, show the DAG stopping at validate (nothing promoted), then remove it."""
    bad = write_sample(raw, rows=300, seed=7, faulty=True)
    try:
        record = lifecycle_run(root, label="(faulty drop)")
        return {"path": str(bad), "exit_code": record["exit_code"], "note": record.get("note")}
    finally:
        bad.unlink(missing_ok=True)
        lifecycle.dvc("add", "--quiet", str(raw))


def _serve_once(params) -> dict:
    """Start the real server on a free loopback port, ask it one request of each kind it supports."""
    import socket

    import httpx

    from pipelines.serve import wait_ready

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PIPELINES_API_KEYS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(url, timeout=180, proc=proc)
        except (RuntimeError, TimeoutError) as err:
            raise CheckFailed(f"the demo server did not come up: {err}") from None
        answers = {}
        if params.data.task == "classification":
            r = httpx.post(f"{url}/v1/classify", json={"texts": ["my new card still has not arrived"]}, timeout=60)
            answers["classify"] = r.json()["results"][0] | {"model_version": r.json()["model_version"]}
        else:
            r = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                           json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 16})
            answers["chat"] = r.json()["choices"][0]["message"] | {"model_version": r.json()["model_version"]}
        _say(f"served {params.registry.model_name} v{r.json()['model_version']} on {url}: {answers}")
        return answers
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _remote_url() -> str:
    listed = lifecycle.dvc("remote", "list").strip()
    return listed.splitlines()[0] if listed else ""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
