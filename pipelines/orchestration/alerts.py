"""The lifecycle DAG's deadline alert: a run still not done `lifecycle.run_deadline_h` after it was
queued (Airflow's DeadlineAlert; the scheduler notices, the triggerer runs `run_overdue`).

Inputs: the model, the deadline in hours, the name of the env var holding a webhook URL (a secret,
so never in params), and Airflow's simple context (`dag_run` as the REST API shows it, `deadline`).
Outputs: a warning in the triggerer's log and, when the webhook is set, one JSON POST (`text` for
Slack-compatible hooks, plus model, dag_id, run_id, state, queued_at); a webhook that fails is logged,
never raised: the alert must not take the triggerer down.
"""
from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("pipelines.orchestration.alerts")


def message(model: str, hours: float, context: dict[str, Any] | None) -> dict[str, Any]:
    run = (context or {}).get("dag_run") or {}
    text = (f"lifecycle__{model} run {run.get('dag_run_id') or run.get('run_id') or '?'} is not done "
            f"{hours:g} h after it was queued (state {run.get('state') or '?'}); look at it in Airflow")
    return {"text": text, "model": model, "dag_id": run.get("dag_id"), "run_id": run.get("dag_run_id") or
            run.get("run_id"), "state": run.get("state"), "queued_at": run.get("queued_at")}


async def run_overdue(model: str, hours: float, webhook_env: str, context: dict[str, Any] | None = None) -> dict:
    """Say that a lifecycle run missed its deadline; POST it to the webhook when one is configured."""
    import httpx

    body = message(model, hours, context)
    log.warning("%s", body["text"])
    url = os.environ.get(webhook_env)
    if url:
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                (await client.post(url, json=body)).raise_for_status()
        except httpx.HTTPError as err:
            log.error("deadline alert webhook (%s) failed: %s", webhook_env, type(err).__name__)
    return body
