"""
### rollback

Manual: move the `champion` alias of a model back (to `previous` when no version is given, or to
the version named), with the reason recorded in the registry ledger. Servers following the alias
swap within a few seconds.
"""
from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import Param, dag, task

from lifecycle_common import MODEL, REPO, guarded, run_info
from pipelines.config import MODEL_NAME_PATTERN, REASON_MAX_CHARS, REASON_MIN_CHARS


@dag(
    dag_id="rollback",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["mlops", "registry"],
    doc_md=__doc__,
    params={
        "model": Param(MODEL, type="string", pattern=MODEL_NAME_PATTERN, title="Model"),
        "to_version": Param(None, type=["null", "integer"], minimum=1, title="Target version",
                            description="Empty: the previous champion."),
        "reason": Param(type="string", minLength=REASON_MIN_CHARS, maxLength=REASON_MAX_CHARS,
                        title="Why (recorded in the ledger)"),
    },
    default_args={"owner": "ml-platform", "retries": 0},
)
def rollback():
    @task
    def move_champion(params=None) -> dict:
        from pipelines import lifecycle

        return guarded("move_champion", lifecycle.rollback, REPO, params["model"], params["to_version"],
                       params["reason"], run_info())

    move_champion()


rollback()
