"""
### rollback

Manual: move the `champion` alias of a model back (to `previous` when no version is given, or to
the version named), with the reason recorded in the registry ledger. Servers following the alias
swap within a few seconds.
"""
from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import Param, dag, task
from lifecycle_common import MODELS, guarded, run_info

from pipelines.core.config import REASON_MAX_CHARS, REASON_MIN_CHARS

BY_NAME = {m.name: m for m in MODELS}


@dag(
    dag_id="rollback",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["mlops", "registry"],
    doc_md=__doc__,
    params={
        "model": Param(next(iter(BY_NAME), None), type="string", enum=sorted(BY_NAME) or [""], title="Model"),
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
        from pipelines.core.errors import InputError
        from pipelines.orchestration import steps

        model = BY_NAME.get(params["model"])
        if model is None:
            raise InputError(f"unknown model {params['model']!r}; one of {sorted(BY_NAME)}")
        return guarded("move_champion", model, steps.rollback, model.project, model.name, params["to_version"],
                       params["reason"], run_info())

    move_champion()


rollback()
