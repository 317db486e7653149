"""A real distributed Airflow for tests and benchmarks: CeleryExecutor, PostgreSQL metadata DB, Redis
broker, an api-server, scheduler and dag-processor, and Celery workers that each live on a "machine"
of their own (own working directory, AIRFLOW_HOME, logs, DVC cache and scratch; only the git remote,
the DVC remote and the registry are shared)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx

from pipelines.devtools import airflow_local
from tests.lifecycle_support import airflow_env
from tests.services_support import postgres, redis
from tests.serving_support import free_port

AIRFLOW = str(Path(sys.executable).parent / "airflow")


class Cluster:
    def __init__(self, tmp: Path, repo: Path, db: str, broker: str):
        self.tmp, self.repo, self.procs = tmp, repo, {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        home = tmp / "scheduler-host"
        self.env = airflow_env(
            repo, AIRFLOW_HOME=str(home), AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=db, AIRFLOW__CELERY__BROKER_URL=broker,
            AIRFLOW__CELERY__RESULT_BACKEND="db+" + db,
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(home / "passwords.json"),
            AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(home / "logs"),
            AIRFLOW__API__HOST="127.0.0.1", AIRFLOW__API__PORT=str(self.port),
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.url}/execution/",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin",
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="30",
            AIRFLOW__CORE__PARALLELISM="8",
            PIPELINES_GIT_REMOTE=str(repo))
        home.mkdir(parents=True)

    def start(self, name: str, *args: str, cwd: Path | None = None, **env: str) -> None:
        cwd = cwd or self.tmp / "scheduler-host"
        cwd.mkdir(parents=True, exist_ok=True)
        log = open(self.tmp / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen([AIRFLOW, *args], cwd=cwd, env={**self.env, **env}, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def worker(self, name: str, queue: str) -> None:
        """A Celery worker on a "machine" of its own: own cwd, AIRFLOW_HOME, logs, DVC cache and scratch."""
        machine = self.tmp / name
        self.start(name, "celery", "worker", "-q", queue, "-c", "2" if queue == "default" else "1",
                   "-H", f"{name}@%h", cwd=machine, AIRFLOW_HOME=str(machine / "home"),
                   AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(machine / "logs"),
                   AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
                   PIPELINES_WORKER_CACHE=str(machine / "dvc-cache"), PIPELINES_SCRATCH=str(machine / "scratch"),
                   PIPELINES_WORKER_NAME=name)

    def kill(self, name: str) -> None:
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait(timeout=30)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(self.tmp.glob("*.log")))

    def api(self, method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(method, f"{self.url}/api/v2{path}", headers={"Authorization": f"Bearer {self.token}"},
                             timeout=30, **kw)

    def wait_token(self) -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                assert proc.poll() is None, f"{name} exited:\n{self.logs()}"
            try:
                passwords = self.tmp / "scheduler-host" / "passwords.json"
                if passwords.exists() and httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).status_code == 200:
                    r = httpx.post(f"{self.url}/auth/token", timeout=10, json={
                        "username": "admin", "password": json.loads(passwords.read_text())["admin"]})
                    if r.status_code in (200, 201):
                        self.token = r.json()["access_token"]
                        return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(2)
        raise AssertionError(f"the api-server did not come up:\n{self.logs()}")

    def wait_run(self, dag_id: str, run_id: str, seconds: float = 900) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()
            if run.get("state") in ("success", "failed"):
                if run["state"] != "success":
                    tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
                    raise AssertionError(f"{dag_id} {run['state']}: {[(t['task_id'], t['state']) for t in tis]}\n"
                                         f"{self.logs()}")
                return run
            time.sleep(5)
        raise AssertionError(f"{dag_id} {run_id} did not finish in {seconds} s:\n{self.logs()}")

    def trigger(self, dag_id: str, conf: dict) -> str:
        assert self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False}).status_code == 200
        created = self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        assert created.status_code == 200, created.text
        return created.json()["dag_run_id"]

    def xcom(self, dag_id: str, run_id: str, task_id: str):
        r = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
                     params={"deserialize": "true"})
        assert r.status_code == 200, r.text
        value = r.json()["value"]
        return json.loads(value) if isinstance(value, str) else value

    def task(self, dag_id: str, run_id: str, task_id: str) -> dict:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}").json()


@contextlib.contextmanager
def celery_cluster(tmp: Path, repo: Path, models: list[str]) -> Iterator[Cluster]:
    """Start everything (a `cpu-worker` on queue `default`, a `gpu-worker` on queue `gpu`); wait until the
    models' DAGs are parsed; stop everything after."""
    with postgres() as db, redis() as broker:
        c = Cluster(tmp, repo, db, broker)
        airflow_local.setup(repo, extra=c.env)
        c.start("api-server", "api-server")
        c.start("scheduler", "scheduler")
        c.start("dag-processor", "dag-processor")
        c.worker("cpu-worker", "default")
        c.worker("gpu-worker", "gpu")
        try:
            c.wait_token()
            deadline = time.monotonic() + 180
            while not all(c.api("GET", f"/dags/lifecycle__{m}").status_code == 200 for m in models):
                assert time.monotonic() < deadline, f"the DAGs were not parsed:\n{c.logs()}"
                time.sleep(3)
            yield c
        finally:
            c.stop()
