"""Listener: when a model_lifecycle run ends, its note says what it decided (from the run record)."""
from __future__ import annotations

import os
from pathlib import Path

from airflow.listeners import hookimpl

REPO = Path(os.environ.get("PIPELINES_REPO") or Path(__file__).resolve().parents[1])


def _note(dag_run) -> None:
    if dag_run.dag_id != "model_lifecycle":
        return
    try:
        from pipelines.lifecycle import read_record

        record = read_record(REPO, dag_run.run_id)
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
