"""Shared wiring for the DAGs of this folder (no DAG here): the model folders, their Assets, the
shared locations a task works against, the run's identity and the one wrapper that turns
`pipelines` errors into Airflow task outcomes.

Parsing this file imports only the standard library, yaml, pydantic (`pipelines.core.config`) and the
Airflow SDK. Where tasks find the shared state is read from the worker's environment when a task
runs (never at parse time): PIPELINES_GIT_REMOTE (default: this checkout), PIPELINES_DVC_REMOTE
(default: the repository's default remote), PIPELINES_WORKER_CACHE and PIPELINES_SCRATCH (default:
under $AIRFLOW_HOME/pipelines/).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, NamedTuple

from airflow.sdk import Asset, get_current_context

from pipelines.core.config import MODEL_NAME_PATTERN, Params, load_params
from pipelines.core.errors import PipelineError

# The checkout the DAGs were parsed from (an Airflow DAG bundle): its projects/ folders are the models.
# PIPELINES_REPO names it when the DAG files are mounted elsewhere; a checkout moved since that was set
# (the variable names a folder that is gone) is the one these files are in.
_NAMED = Path(os.environ.get("PIPELINES_REPO") or Path(__file__).resolve().parents[1])
REPO = _NAMED if _NAMED.is_dir() else Path(__file__).resolve().parents[1]


class Model(NamedTuple):
    name: str
    project: str               # the folder, relative to the repository: projects/<name>
    params: Params | None      # None when the folder's params do not parse ...
    error: str | None          # ... and then why (its DAG fails at once, saying so)


def discover(repo: Path = REPO) -> list[Model]:
    """Every model folder (projects/<name>/params.yaml), sorted by name."""
    import re

    found = []
    for path in sorted((repo / "projects").glob("*/params.yaml")):
        name, project = path.parent.name, f"projects/{path.parent.name}"
        if not re.fullmatch(MODEL_NAME_PATTERN, name):
            continue
        try:
            found.append(Model(name, project, load_params(path), None))
        except PipelineError as err:
            found.append(Model(name, project, None, str(err)))
    return found


MODELS = discover()


def location(model: Model, path: str) -> str:
    """A params path as an Asset URI (relative paths are in the model's folder of this checkout)."""
    if "://" in path:
        return path
    return f"file://{os.path.normpath(REPO / model.project / path)}"


def raw_drops(model: Model) -> Asset:
    """A new drop in the model's default dataset is an event on this Asset; it starts its lifecycle."""
    datasets = model.params.lifecycle.datasets if model.params else {"default": "data/raw"}
    return Asset(name=f"raw_drops__{model.name}", uri=location(model, datasets["default"]))


def champion(model: Model) -> Asset:
    root = model.params.registry.root if model.params else "../../registry"
    return Asset(name=f"champion__{model.name}", uri=f"{location(model, root)}/{model.name}")


def shared():
    """Where this worker finds the shared state and keeps its own cache and workspaces (read when a task runs)."""
    from pipelines.orchestration.runspace import Shared

    home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
    return Shared(git_remote=os.environ.get("PIPELINES_GIT_REMOTE") or str(REPO),
                  cache_dir=os.environ.get("PIPELINES_WORKER_CACHE") or str(home / "pipelines" / "dvc-cache"),
                  scratch=os.environ.get("PIPELINES_SCRATCH") or str(home / "pipelines" / "workspaces"),
                  dvc_remote=os.environ.get("PIPELINES_DVC_REMOTE") or None)


def run_info() -> dict[str, Any]:
    """Who and what started this run, for the registry, the lineage branch and the run record."""
    ctx = get_current_context()
    dr = ctx["dag_run"]
    run_type = str(getattr(dr.run_type, "value", dr.run_type))
    by = getattr(dr, "triggering_user_name", None) or {"scheduled": "schedule (weekly)",
                                                       "asset_triggered": "asset event (new data drop)"}.get(run_type, run_type)
    return {"dag_id": dr.dag_id, "run_id": dr.run_id, "run_type": run_type, "triggered_by": by,
            "logical_date": str(dr.logical_date) if dr.logical_date else None, "conf": dict(dr.conf or {})}


def worker_name() -> str:
    """This worker, as the run's XComs record it per task (PIPELINES_WORKER_NAME, else the host name)."""
    import socket

    return os.environ.get("PIPELINES_WORKER_NAME") or socket.gethostname()


def guarded(task: str, model: Model, fn: Callable[..., Any], *args: Any) -> Any:
    """Call a pipelines step with this worker's `Shared` first. Bad data, params or a failed check fail
    the task at once (no retry) with the reason in the log and the run's note; anything else is
    raised for Airflow to retry."""
    from airflow.sdk.exceptions import AirflowFailException

    from pipelines.orchestration import steps

    run_id = get_current_context()["dag_run"].run_id
    here = shared()
    try:
        if model.error:
            from pipelines.core.errors import ConfigError

            raise ConfigError(model.error)
        result = fn(here, *args)
    except Exception as err:
        steps.fail(here, model.name, model.project, run_id, task, err)
        if steps.is_deterministic(err):
            print(f"{task} failed (not retried): {err}", flush=True)
            raise AirflowFailException(str(err)) from None
        print(f"{task} failed (will retry): {err}", flush=True)
        raise
    return {**result, "worker": worker_name()} if isinstance(result, dict) else result
