"""
### data_arrival

Every five minutes, looks for new files in the default dataset's directory. When a new drop has
landed (name, size or time changed since the last look), it emits an event on the Asset
`raw_drops`, which starts `model_lifecycle`. Otherwise the task is skipped and no event is emitted.
Upload jobs can also post the event themselves: `POST /api/v2/assets/events` with the asset's id.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import dag, task

from lifecycle_common import DATASETS, RAW_DROPS, REPO


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
    @task(outlets=[RAW_DROPS])
    def detect_new_drop() -> list[str]:
        from airflow.sdk.exceptions import AirflowSkipException

        from pipelines import lifecycle

        new = lifecycle.new_drops(REPO, DATASETS["default"])
        if not new:
            raise AirflowSkipException("no new drop")
        print(f"new drop(s): {new}", flush=True)
        return new

    detect_new_drop()


data_arrival()
