"""
### lifecycle__&lt;model&gt;

One DAG per model folder (`projects/<model>/`): the whole lifecycle of that model.

`snapshot` (the run's params applied and its dataset DVC-tracked, in a checkout of its own) →
`validate` (GX) → `prepare` → `train` (LoRA; `gpu` queue and pool; checkpoints pushed to shared
storage, a retry on any worker resumes) → `evaluate` → `gate` → `decide` → [`approve`, when asked]
→ `promote` (registry `champion`) → `notify_serving` → `lineage` (evidence committed to the
`lineage` git branch) → `finish` (teardown).

Every task works in a fresh checkout of the run's commit (`refs/runs/<model>/<run>` in the git
remote), pulls its inputs from the DVC remote, pushes its outputs and commits `dvc.lock` and the run
record for the next task, which may run on another machine: no shared disk, and the user's checkout
is never written. Unchanged stages are restored from DVC's run-cache. A rejected candidate ends the
run without promotion; the reasons are in the `gate` log and the run's note. Invalid data, bad params
or a failed check fail at once; other failures retry. Runs of different models, or of one model on
different data, run side by side; promotions of one model are serialised by the registry's lock.

Starts on the model's `lifecycle.schedule` (weekly), when a new drop lands in its default dataset
(Asset `raw_drops__<model>`, see `data_arrival`), or from the trigger form. A weekly slot the scheduler
missed (the platform was down) is skipped when it comes back more than `lifecycle.missed_slot_grace_h`
after it (`lifecycle.missed_slot: run` runs it instead): starting the scheduler never retrains every model.
"""
from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task, teardown
from airflow.sdk.definitions.callback import AsyncCallback
from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference
from lifecycle_common import MODELS, Model, champion, guarded, raw_drops, run_info

from pipelines.core.config import LifecycleParams


def form(lc: LifecycleParams) -> dict[str, Param]:
    """The trigger form, its bounds from the model's params (`lifecycle` section)."""
    low, high = lc.learning_rate_range
    return {
        "dataset": Param("default", enum=sorted(lc.datasets), title="Dataset",
                         description="A dataset named in the model's params (lifecycle.datasets), never a path."),
        "base_model": Param(None, type=["null", "string"], enum=[None, *lc.base_models], title="Base model",
                            description="Empty: the params' train.base_model."),
        "epochs": Param(None, type=["null", "integer"], minimum=1, maximum=lc.max_epochs, title="Epochs"),
        "learning_rate": Param(None, type=["null", "number"], minimum=low, maximum=high, title="Learning rate"),
        "lora_rank": Param(None, type=["null", "integer"], enum=[None, *lc.lora_ranks], title="LoRA rank"),
        "min_accuracy": Param(None, type=["null", "number"], minimum=lc.gate_floor.min_accuracy, maximum=1,
                              title="Gate: minimum accuracy", description="Tighten freely; loosen only to the floor."),
        "min_macro_f1": Param(None, type=["null", "number"], minimum=lc.gate_floor.min_macro_f1, maximum=1,
                              title="Gate: minimum macro-F1"),
        "require_approval": Param(False, type="boolean", title="Promotion needs a human approval"),
    }


class Approval(ApprovalOperator):
    """Airflow's approval step that keeps the answer, whichever it is, in the run's record in git (who,
    what, when; `steps.record_review`): `promote` promotes only on an "Approve" by an approver recorded
    there, so the step marked done through the API without an answer, or an XCom written by hand,
    promotes nothing. Only Airflow's answer event reaches this method."""

    def __init__(self, *, model: Model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def execute_complete(self, context, event):
        if "error" not in event:
            from pipelines.orchestration import steps
            from pipelines.orchestration.runspace import RunRef

            answer = {"chosen_options": event["chosen_options"], "responded_by_user": event.get("responded_by_user"),
                      "responded_at": event.get("responded_at")}
            guarded("approve", self.model, steps.record_review, RunRef.of(context["ti"].xcom_pull(task_ids="gate")),
                    run_info(), answer)
        return super().execute_complete(context=context, event=event)


# The approval request (Markdown, rendered by Airflow at run time): what passed, and where the evidence is.
APPROVAL_BODY = """Run `{{ run_id }}`: the candidate passed the gate ({{ ti.xcom_pull(task_ids='gate')['summary'] }}).

Its evaluation beside the champion's and the gate's checklist:
[the run on the MLOps page](/mlops/models/MODEL/runs/{{ run_id | urlencode }}).
Approve to make it champion; Reject to keep the champion serving (recorded with your name)."""


def _stage(model: Model, name: str, upstream, **kwargs):
    @task(task_id=name, **kwargs)
    def run_stage(run: dict) -> dict:
        from pipelines.orchestration import steps
        from pipelines.orchestration.runspace import RunRef

        return guarded(name, model, steps.run_stage, RunRef.of(run), name)

    return run_stage(upstream)


def _train(model: Model, upstream):
    """`train` on the `gpu` queue and pool; or, with PIPELINES_TRAIN_POD_IMAGE set (KubernetesExecutor or
    a cluster without GPU Celery workers), as a pod that requests `nvidia.com/gpu` (needs the
    cncf.kubernetes provider; see pipelines.orchestration.kubernetes)."""
    import os

    kwargs = {"pool": "gpu", "execution_timeout": timedelta(hours=6), "retries": 3}
    image = os.environ.get("PIPELINES_TRAIN_POD_IMAGE")
    if not image:
        return _stage(model, "train", upstream, queue="gpu", **kwargs)
    from pipelines.orchestration.kubernetes import build_operator, train_pod_spec

    spec = train_pod_spec(image, "{{ ti.xcom_pull(task_ids='prepare') | tojson }}",
                          git_remote=os.environ["PIPELINES_GIT_REMOTE"], dvc_remote=os.environ.get("PIPELINES_DVC_REMOTE"))
    pod = build_operator({**spec, **kwargs})
    upstream >> pod
    return pod.output


def deadline(name: str, lc: LifecycleParams) -> DeadlineAlert | None:
    """The run-level alert: a run still not done `run_deadline_h` after it was queued notifies."""
    if lc.run_deadline_h is None:
        return None
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=timedelta(hours=lc.run_deadline_h),
                         callback=AsyncCallback("pipelines.orchestration.alerts.run_overdue",
                                                kwargs={"model": name, "hours": lc.run_deadline_h,
                                                        "webhook_env": lc.alert_webhook_env}))


def build(model: Model):
    lc = model.params.lifecycle if model.params else LifecycleParams()
    fields = form(lc)
    timetable = CronTriggerTimetable(lc.schedule, timezone="UTC") if lc.schedule else None

    @dag(
        dag_id=f"lifecycle__{model.name}",
        # No start_date: with it, unpausing would start the missed weekly retrain at once; without it the
        # first scheduled run waits for the next slot (CronTriggerTimetable run_immediately=False).
        schedule=AssetOrTimeSchedule(timetable=timetable, assets=[raw_drops(model)]) if timetable else [raw_drops(model)],
        catchup=False,
        max_active_runs=4,
        tags=["mlops", "lifecycle", model.name] + (["broken"] if model.error else []),
        doc_md=__doc__ + (f"\n\n**This model's params do not load:** {model.error}" if model.error else ""),
        description=model.error or f"the lifecycle of {model.name} ({model.project})",
        params=fields,
        default_args={"owner": "ml-platform", "retries": 2, "retry_delay": timedelta(seconds=30),
                      "retry_exponential_backoff": True},
        deadline=deadline(model.name, lc),
    )
    def lifecycle():
        @task
        def snapshot(params=None, dag_run=None) -> dict:
            from datetime import datetime, timezone

            from airflow.sdk.exceptions import AirflowSkipException

            from pipelines.orchestration import steps
            from pipelines.orchestration.schedule import missed_slot

            skip = missed_slot(run_info()["run_type"], dag_run.logical_date, datetime.now(timezone.utc),
                               lc.missed_slot, lc.missed_slot_grace_h)
            if skip:  # a platform back after a missed weekly slot: not every model's retrain at once
                raise AirflowSkipException(skip)
            conf = {k: params[k] for k in fields}
            return guarded("snapshot", model, steps.start, model.project, model.name, conf, run_info())

        @task
        def gate(run: dict) -> dict:
            from pipelines.orchestration import steps
            from pipelines.orchestration.runspace import RunRef

            return guarded("gate", model, steps.gate, RunRef.of(run))

        @task.branch
        def decide(outcome: dict, snap: dict) -> list[str]:
            if not outcome["passed"]:
                print(f"GATE REJECTED candidate {outcome['candidate'][:12]}: {outcome['reasons']}", flush=True)
                return ["lineage"]
            print(f"gate passed ({outcome['summary']})", flush=True)
            return ["approve" if snap["require_approval"] else "promote", "lineage"]

        approve = Approval(
            model=model, task_id="approve", subject=f"Promote the new {model.name} candidate to champion?",
            body=APPROVAL_BODY.replace("MODEL", model.name), retries=0,
            assigned_users=[{"id": user, "name": user} for user in lc.approvers] or None,
            response_timeout=timedelta(hours=lc.approval_timeout_h))

        @task(trigger_rule="none_failed_min_one_success", outlets=[champion(model)], retries=1)
        def promote(ti=None, outlet_events=None) -> dict:
            from pipelines.orchestration import steps
            from pipelines.orchestration.runspace import RunRef

            # an approval, when the run asked for one, is read from the run's record in git (steps.promote)
            promoted = guarded("promote", model, steps.promote, RunRef.of(ti.xcom_pull(task_ids="gate")), run_info())
            outlet_events[champion(model)].extra = promoted["champion"]  # what the Asset's event shows
            return promoted

        @task
        def notify_serving(promotion: dict) -> list[str]:
            from pipelines.orchestration import steps
            from pipelines.orchestration.runspace import RunRef

            return guarded("notify_serving", model, steps.notify_serving, RunRef.of(promotion), promotion["version"])

        @task(trigger_rule="none_failed_min_one_success")
        def lineage(ti=None) -> dict:
            from pipelines.orchestration import steps
            from pipelines.orchestration.runspace import RunRef

            latest = ti.xcom_pull(task_ids="promote") or ti.xcom_pull(task_ids="gate")
            return guarded("lineage", model, steps.record, RunRef.of(latest), run_info())

        @teardown
        def finish() -> bool:
            from lifecycle_common import shared

            from pipelines.orchestration import steps

            return steps.finish(shared(), model.name, model.project, run_info()["run_id"])

        snap = snapshot()
        validated = _stage(model, "validate", snap, retries=1)
        prepared = _stage(model, "prepare", validated, retries=1)
        trained = _train(model, prepared)
        evaluated = _stage(model, "evaluate", trained, retries=1)
        outcome = gate(evaluated)
        decided = decide(outcome, snap)
        promoted = promote()
        record = lineage()
        decided >> [approve, promoted, record]
        approve >> promoted
        notify_serving(promoted) >> record
        record >> finish().as_teardown(setups=snap)

    return lifecycle()


for _model in MODELS:
    globals()[f"lifecycle__{_model.name}"] = build(_model)
