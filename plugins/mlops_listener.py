"""Listener: when a `lifecycle__<model>` run ends, its note says what it decided (from the run's
record, read from its run ref in the git remote: the scheduler needs no disk a task wrote)."""
from __future__ import annotations

import os
from pathlib import Path

from airflow.listeners import hookimpl

_NAMED = Path(os.environ.get("PIPELINES_REPO") or Path(__file__).resolve().parents[1])
REPO = _NAMED if _NAMED.is_dir() else Path(__file__).resolve().parents[1]  # a checkout moved since it was named
PREFIX = "lifecycle__"


def _note(dag_run) -> None:
    if not dag_run.dag_id.startswith(PREFIX):
        return
    try:
        from pipelines.orchestration import records

        remote = os.environ.get("PIPELINES_GIT_REMOTE") or str(REPO)
        record = records.read(remote, dag_run.dag_id.removeprefix(PREFIX), dag_run.run_id)
        if record and record.get("note"):
            dag_run.note = record["note"][:1000]
    except Exception as err:  # a note is a courtesy: never break the scheduler for it
        print(f"mlops listener: no note for {dag_run.run_id}: {err}")


@hookimpl
def on_dag_run_success(dag_run, msg):
    _note(dag_run)


@hookimpl
def on_dag_run_failed(dag_run, msg):
    _note(dag_run)
