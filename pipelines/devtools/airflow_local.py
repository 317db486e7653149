"""The embedded Airflow of a checkout: SQLite metadata DB under `.airflow/`, this repo's DAGs and plugins.

Inputs: the project root. Outputs: `env(root)`, the environment for `airflow` commands; `setup(root)`
(migrates the DB once, creates the `gpu` pool); `dags_test(root, dag_id, conf)` (one run of a DAG in
one process, the way `airflow dags test` does it), returning its exit code and output.
Airflow is only ever run as a command here; this package does not import it.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from pipelines.core.errors import CheckFailed

OL_EXTRACTOR = "lifecycle_openlineage.LifecycleExtractor"  # dags/lifecycle_openlineage.py


def env(root: Path | str, home: Path | str | None = None) -> dict[str, str]:
    root = Path(root).resolve()
    home = Path(home or root / ".airflow").resolve()
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "AIRFLOW_HOME": str(home), "PIPELINES_REPO": str(root),
            "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
            "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
            # the lifecycle tasks' lineage for the OpenLineage provider (inert until [openlineage] has a transport)
            "AIRFLOW__OPENLINEAGE__EXTRACTORS": os.environ.get("AIRFLOW__OPENLINEAGE__EXTRACTORS", OL_EXTRACTOR),
            # it reads the task's XCom on completion: emit in a thread, not a fork sharing the supervisor's socket
            "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": os.environ.get("AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD", "True")}


def airflow(root: Path | str, *args: str, check: bool = True, home: Path | str | None = None,
            stream: bool = False, extra: dict[str, str] | None = None, log: Path | None = None,
            verbose: bool = True) -> subprocess.CompletedProcess:
    """An `airflow` command on this checkout's embedded Airflow (`extra`: environment overrides, such
    as another metadata DB). `stream`: show progress as it happens (every line when `verbose`, else
    which task runs and training's progress), keeping the text for the caller and in `log`."""
    cmd = [str(Path(sys.executable).parent / "airflow"), *args]
    environ = {**env(root, home), **(extra or {})}
    if stream:
        proc = subprocess.Popen(cmd, cwd=root, env=environ, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        lines = []
        with contextlib.ExitStack() as stack:
            sink = stack.enter_context(open(log, "w", encoding="utf-8")) if log else None
            status = _Status(sys.stderr)
            for line in proc.stdout:
                lines.append(line)
                if sink:
                    sink.write(line)
                    sink.flush()
                if verbose and _worth_showing(line):
                    print(line.rstrip()[:300], file=sys.stderr, flush=True)
                elif not verbose:
                    status.update(line)
            status.close()
        done = subprocess.CompletedProcess(cmd, proc.wait(), "".join(lines), "")
    else:
        done = subprocess.run(cmd, cwd=root, env=environ, text=True, capture_output=True)
    if check and done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()
        raise CheckFailed(f"`airflow {' '.join(args[:2])}` failed: {tail[-1] if tail else done.returncode}")
    return done


def _worth_showing(line: str) -> bool:
    keys = ("Running stage", "didn't change", "gate ", "GATE", "promoted", "error:", "failed", "Marking task",
            "epoch", "FAILED", "PASSED", "lineage")
    return any(k in line for k in keys)


class _Status:
    """One status line: the task running and training's latest progress. Rewritten in place on a
    terminal; elsewhere (a CI log) one line per task."""

    TASK = re.compile(r"starting task_id=(\w+)")
    STEP = re.compile(r"(train step \d+/\d+.*?)(?: tok/s.*)?$")

    def __init__(self, stream) -> None:
        self.stream, self.tty, self.task, self.shown = stream, stream.isatty(), None, False

    def update(self, line: str) -> None:
        task, step = self.TASK.search(line), self.STEP.search(line.rstrip())
        if task and task.group(1) != self.task:
            self.task = task.group(1)
            if self.tty:
                self.stream.write(f"\r\x1b[K  ... {self.task}")
            else:  # the tasks on one line, as they start
                self.stream.write(("  tasks:" if not self.shown else "") + f" {self.task}")
            self.shown = True
        elif step and self.tty:
            self.stream.write(f"\r\x1b[K  ... {self.task}: {step.group(1)[:100]}")
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K" if self.tty else "\n")
            self.stream.flush()


REGISTRY_KEYS = Path(".airflow") / "registry-keys"  # what the model folders' params name (registry section)


def registry_keys(root: Path | str) -> Path:
    """The embedded default's registry key pair (made once, like Airflow's generated admin password):
    `signing.pem` (the private key: mode 0600, in a 0700 folder, git-ignored) and `trusted.pub` (its
    public key, which the model folders' `registry.trusted_keys_file` names). Returns the folder."""
    from pipelines.registry import signing

    folder = Path(root) / REGISTRY_KEYS
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    private = folder / "signing.pem"
    if not private.exists():
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(signing.new_key_pem())
    public = signing.public_key(signing.load_key(private.read_bytes(), str(private)))
    trusted = folder / "trusted.pub"
    if not trusted.exists() or public not in trusted.read_text(encoding="utf-8"):
        trusted.write_text(f"# the embedded default's registry signing key (made by its set-up)\n{public}\n",
                           encoding="utf-8")
    return folder


def setup(root: Path | str, home: Path | str | None = None, extra: dict[str, str] | None = None) -> None:
    """Migrate the metadata DB (idempotent), create the `gpu` pool the train task runs in, and make the
    registry's signing key pair (once)."""
    registry_keys(root)
    airflow(root, "db", "migrate", home=home, extra=extra)
    airflow(root, "pools", "set", "gpu", "1", "accelerators for train (1 slot per device)", home=home, extra=extra)


def dags_test(root: Path | str, dag_id: str, conf: dict | None = None, home: Path | str | None = None,
              stream: bool = True, log: Path | None = None, verbose: bool = True) -> subprocess.CompletedProcess:
    return airflow(root, "dags", "test", dag_id, "-c", json.dumps(conf or {}), check=False, home=home,
                   stream=stream, log=log, verbose=verbose)
