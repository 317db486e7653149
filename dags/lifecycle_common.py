"""Shared wiring for the DAGs of this folder (no DAG here): the project root, the data Asset,
the run's identity and the one wrapper that turns `pipelines` errors into Airflow task outcomes.

Parsing this file imports only the standard library, yaml and the Airflow SDK.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import yaml
from airflow.sdk import Asset, get_current_context

# The DVC workspace the DAGs run in: this checkout, unless PIPELINES_REPO names another.
REPO = Path(os.environ.get("PIPELINES_REPO") or Path(__file__).resolve().parents[1])
PARAMS: dict[str, Any] = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")) or {}
LIFECYCLE: dict[str, Any] = PARAMS.get("lifecycle") or {}
DATASETS: dict[str, str] = LIFECYCLE.get("datasets") or {"default": "data/raw"}
MODEL = (PARAMS.get("registry") or {}).get("model_name", "text-classifier")

# A new drop in the default dataset's directory is an event on this Asset; it starts model_lifecycle.
RAW_DROPS = Asset(name="raw_drops", uri=f"file://{(REPO / DATASETS['default']).as_posix()}")
CHAMPION = Asset(name=f"{MODEL}_champion", uri=f"file://{(REPO / 'registry' / MODEL).as_posix()}")


def run_info() -> dict[str, Any]:
    """Who and what started this run, for the registry, the lineage branch and the run record."""
    ctx = get_current_context()
    dr = ctx["dag_run"]
    run_type = str(getattr(dr.run_type, "value", dr.run_type))
    by = getattr(dr, "triggering_user_name", None) or {"scheduled": "schedule (weekly)",
                                                       "asset_triggered": "asset event (new data drop)"}.get(run_type, run_type)
    return {"dag_id": dr.dag_id, "run_id": dr.run_id, "run_type": run_type, "triggered_by": by,
            "logical_date": str(dr.logical_date) if dr.logical_date else None, "conf": dict(dr.conf or {})}


def guarded(task: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call a pipelines step. Bad data, params or a failed check fail the task at once (no retry)
    with the reason in the log and the run's note; anything else is raised for Airflow to retry."""
    from airflow.sdk.exceptions import AirflowFailException

    from pipelines import lifecycle

    run_id = get_current_context()["dag_run"].run_id
    try:
        result = fn(*args)
    except Exception as err:
        lifecycle.fail(REPO, run_id, task, err)
        if lifecycle.is_deterministic(err):
            print(f"{task} failed (not retried): {err}", flush=True)
            raise AirflowFailException(str(err)) from None
        raise
    return result
