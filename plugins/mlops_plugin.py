"""Airflow 3 plugin "mlops": a page of models, versions, aliases, gate decisions and lineage, and the
DAG runs' notes.

- FastAPI app at `/mlops` (inside the Airflow api-server): `/mlops/` (all models), `/mlops/models/<m>`
  (versions, aliases, the ledger, each lifecycle run's gate decision, rejections included),
  `/mlops/models/<m>/versions/<n>` (the re-verified lineage chain), `/mlops/models/<m>/runs/<run_id>`
  (what a lifecycle run did; `/mlops/dags/lifecycle__<m>/runs/<run_id>` from a DAG run), each also as
  JSON with `?format=json`.
- Plugin apps get no Airflow authentication for free: every route here requires an Airflow session
  (the UI's `_token` cookie or an `Authorization: Bearer` JWT from `/auth/token`) that the auth
  manager accepts, and DAG read permission; otherwise 401/403.
- External views: "Models" in the navigation and "Lifecycle" on each DAG run.
- A listener that writes each `lifecycle__<model>` run's outcome (the run record each task commits to
  `refs/runs/<model>/<run>`, see `pipelines.orchestration.records`) into the DAG run's note when the
  run ends: the gate's reasons, the version promoted, or where it stopped.
"""
from __future__ import annotations

import sys
from pathlib import Path

from airflow.plugins_manager import AirflowPlugin

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mlops_listener  # noqa: E402
from mlops_app import app  # noqa: E402


class MlopsPlugin(AirflowPlugin):
    name = "mlops"
    fastapi_apps = [{"app": app, "url_prefix": "/mlops", "name": "MLOps registry and lineage"}]
    external_views = [
        {"name": "Models", "href": "mlops/", "destination": "nav", "category": "browse", "url_route": "mlops"},
        {"name": "Lifecycle", "href": "mlops/dags/{DAG_ID}/runs/{RUN_ID}", "destination": "dag_run", "url_route": "mlops_run"},
    ]
    listeners = [mlops_listener]
