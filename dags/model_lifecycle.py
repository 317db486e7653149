"""
### model_lifecycle

The whole lifecycle of one model, on the DVC workspace of this project:

`snapshot` (DVC-track the dataset, apply this run's params) → `validate` (GX) → `prepare` → `train`
(LoRA, `gpu` pool, resumes from its checkpoint on retry) → `evaluate` → `gate` → [`approve`, when
asked] → `promote` (registry `champion`) → `notify_serving` → `lineage` (evidence committed to the
`lineage` git branch, data and models pushed to the DVC remote) → `finish` (teardown: params.yaml restored).

Every stage task runs its `dvc.yaml` stage, so `dvc.lock` records exactly what ran. A rejected
candidate ends the run without promotion; the reasons are in the `gate` log and the run's note.
Invalid data, bad params or a failed check fail at once; other failures retry.

Starts weekly (Monday 03:00 UTC), when a new drop lands in the default dataset (Asset `raw_drops`,
see the `data_arrival` DAG), or from the trigger form. One run at a time: DVC allows one process per workspace.
"""
from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task, teardown

from lifecycle_common import CHAMPION, DATASETS, LIFECYCLE, MODEL, RAW_DROPS, REPO, guarded, run_info

_lr_low, _lr_high = LIFECYCLE.get("learning_rate_range", [1e-6, 0.05])
_floor = LIFECYCLE.get("gate_floor", {"min_accuracy": 0.5, "min_macro_f1": 0.4})

FORM = {
    "dataset": Param("default", enum=sorted(DATASETS), title="Dataset",
                     description="A dataset named in params.yaml (lifecycle.datasets), never a path."),
    "base_model": Param(None, type=["null", "string"], enum=[None, *LIFECYCLE.get("base_models", ["minilm"])],
                        title="Base model", description="Empty: params.yaml's train.base_model."),
    "epochs": Param(None, type=["null", "integer"], minimum=1, maximum=LIFECYCLE.get("max_epochs", 20), title="Epochs"),
    "learning_rate": Param(None, type=["null", "number"], minimum=_lr_low, maximum=_lr_high, title="Learning rate"),
    "lora_rank": Param(None, type=["null", "integer"], enum=[None, *LIFECYCLE.get("lora_ranks", [4, 8, 16, 32, 64])],
                       title="LoRA rank"),
    "min_accuracy": Param(None, type=["null", "number"], minimum=_floor["min_accuracy"], maximum=1,
                          title="Gate: minimum accuracy", description="Tighten freely; loosen only to the floor."),
    "min_macro_f1": Param(None, type=["null", "number"], minimum=_floor["min_macro_f1"], maximum=1,
                          title="Gate: minimum macro-F1"),
    "require_approval": Param(False, type="boolean", title="Promotion needs a human approval"),
}


def _stage(name: str, **kwargs):
    @task(task_id=name, **kwargs)
    def run_stage() -> dict:
        from pipelines import lifecycle

        return guarded(name, lifecycle.run_stage, REPO, name)

    return run_stage()


def _evaluate():
    @task(task_id="evaluate", retries=1)
    def run_evaluate() -> dict:
        from pipelines import lifecycle

        return guarded("evaluate", lifecycle.evaluate, REPO)

    return run_evaluate()


@dag(
    dag_id="model_lifecycle",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 3 * * 1", timezone="UTC"), assets=[RAW_DROPS]),
    # No start_date: with it, unpausing would start the missed weekly retrain at once; without it the
    # first scheduled run waits for the next Monday 03:00 (CronTriggerTimetable run_immediately=False).
    catchup=False,
    max_active_runs=1,
    tags=["mlops", "lifecycle", MODEL],
    doc_md=__doc__,
    params=FORM,
    default_args={"owner": "ml-platform", "retries": 2, "retry_delay": timedelta(seconds=30),
                  "retry_exponential_backoff": True},
)
def model_lifecycle():
    @task
    def snapshot(params=None) -> dict:
        from pipelines import lifecycle

        conf = {k: params[k] for k in FORM}
        return guarded("snapshot", lifecycle.start, REPO, conf, run_info())

    @task.branch
    def gate(snap: dict) -> list[str]:
        from pipelines import lifecycle

        outcome = guarded("gate", lifecycle.gate, REPO, run_info()["run_id"])
        if not outcome["passed"]:
            print(f"GATE REJECTED candidate {outcome['candidate'][:12]}: {outcome['reasons']}", flush=True)
            return ["lineage"]
        print(f"gate passed ({outcome['summary']})", flush=True)
        return ["approve" if snap["require_approval"] else "promote", "lineage"]

    approve = ApprovalOperator(
        task_id="approve", subject=f"Promote the new {MODEL} candidate to champion?",
        body="Run {{ run_id }}: the candidate passed the gate. See reports/gate/decision.json and the MLOps page.",
        response_timeout=timedelta(days=3), retries=0)

    @task(trigger_rule="none_failed_min_one_success", outlets=[CHAMPION], retries=1)
    def promote(ti=None) -> dict:
        from pipelines import lifecycle

        review = ti.xcom_pull(task_ids="approve") or {}
        reviewer = (review.get("responded_by_user") or {}).get("name") if review else None
        return guarded("promote", lifecycle.promote, REPO, run_info(), reviewer)

    @task
    def notify_serving(promotion: dict) -> list[str]:
        from pipelines import lifecycle

        return guarded("notify_serving", lifecycle.notify_serving, REPO, promotion["version"])

    @task(trigger_rule="none_failed_min_one_success")
    def lineage(ti=None) -> dict:
        from pipelines import lifecycle

        review = ti.xcom_pull(task_ids="approve")
        if review and review.get("chosen_options") == ["Reject"]:
            lifecycle.update_record(REPO, run_info()["run_id"], approval="rejected")
        return guarded("lineage", lifecycle.record, REPO, run_info())

    @teardown
    def finish() -> bool:
        from pipelines import lifecycle

        return lifecycle.finish(REPO, run_info()["run_id"])

    snap = snapshot()
    validate, prepare = _stage("validate", retries=1), _stage("prepare", retries=1)
    train = _stage("train", pool="gpu", execution_timeout=timedelta(hours=6), retries=3)
    evaluate = _evaluate()
    decided = gate(snap)
    promoted = promote()
    record = lineage()
    snap >> validate >> prepare >> train >> evaluate >> decided
    decided >> [approve, promoted, record]
    approve >> promoted
    notify_serving(promoted) >> record
    record >> finish().as_teardown(setups=snap)


model_lifecycle()
