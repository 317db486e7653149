"""
### data_arrival

Every five minutes, looks for new files in each model's default dataset (one task per model folder).
When a new drop has landed (name, size or time changed since the last look), that task emits an
event on the model's Asset `raw_drops__<model>`, which starts `lifecycle__<model>`; otherwise it is
skipped. What was seen last is kept in an Airflow Variable (`pipelines_arrival__<model>`), so any
worker can take the next look. Upload jobs can also post the event themselves:
`POST /api/v2/assets/events` with the asset's id.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import dag, task
from lifecycle_common import MODELS, Model, raw_drops


def _detect(model: Model):
    @task(task_id=f"detect__{model.name}", outlets=[raw_drops(model)])
    def detect_new_drop() -> list[str]:
        from pathlib import Path

        from airflow.sdk import Variable
        from airflow.sdk.exceptions import AirflowSkipException
        from lifecycle_common import shared

        from pipelines.orchestration import steps

        datasets = model.params.lifecycle.datasets if model.params else {"default": "data/raw"}
        where = shared().resolve(model.project, datasets["default"], "the default dataset")
        key = f"pipelines_arrival__{model.name}"
        new, now = steps.new_drops(Path(where), Variable.get(key, default=None, deserialize_json=True))
        Variable.set(key, now, serialize_json=True)
        if not new:
            raise AirflowSkipException("no new drop")
        print(f"new drop(s) for {model.name}: {new}", flush=True)
        return new

    return detect_new_drop()


@dag(
    dag_id="data_arrival",
    schedule=timedelta(minutes=5),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["mlops", "data"],
    doc_md=__doc__,
    default_args={"owner": "ml-platform", "retries": 0},
)
def data_arrival():
    for model in MODELS:
        if model.params is not None and "://" not in model.params.lifecycle.datasets["default"]:
            _detect(model)


data_arrival()
