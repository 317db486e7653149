"""DAG integrity: the files parse without errors, fast, without importing the heavy stack; one
lifecycle DAG per model folder, wired the way its docs say (schedule, queues, pools, form, stage
names); a model folder added or broken changes only its own DAG."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

DAGS = ROOT / "dags"
MODELS = sorted(p.parent.name for p in (ROOT / "projects").glob("*/params.yaml"))
LIFECYCLES = [f"lifecycle__{m}" for m in MODELS]
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
if str(DAGS) not in sys.path:  # Airflow puts the DAGs folder on sys.path; so does this test
    sys.path.insert(0, str(DAGS))


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors_and_the_expected_dags(bag):
    assert bag.import_errors == {}
    assert set(bag.dags) == {*LIFECYCLES, "rollback", "data_arrival"}
    assert len(MODELS) >= 2


PROBE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[2])
import airflow.sdk  # the SDK itself is not the DAG file's cost
from airflow.dag_processing.dagbag import DagBag
t = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
seconds = time.perf_counter() - t
heavy = sorted(m for m in ("torch", "transformers", "great_expectations", "peft", "pandas", "dvc") if m in sys.modules)
print(json.dumps({"seconds": seconds, "heavy": heavy, "errors": list(bag.import_errors), "dags": list(bag.dags)}))
"""


@pytest.mark.parametrize("name", ["lifecycle.py", "rollback.py", "data_arrival.py"])
def test_parse_is_light_and_fast(name):
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    out = subprocess.run([sys.executable, "-c", PROBE, str(DAGS / name), str(DAGS)], env=env, capture_output=True, text=True,
                         timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == [] and result["dags"]
    assert result["heavy"] == [], f"{name} imports {result['heavy']} at parse time"
    assert result["seconds"] < 1.0, f"{name} took {result['seconds']:.2f} s to parse"


@pytest.mark.parametrize("model", MODELS)
def test_lifecycle_schedule_concurrency_and_doc(bag, model):
    dag = bag.dags[f"lifecycle__{model}"]
    assert dag.max_active_runs > 1 and dag.catchup is False and dag.doc_md and model in dag.tags
    timetable = dag.timetable
    assert type(timetable).__name__ == "AssetOrTimeSchedule"
    assert [a.name for a in timetable.asset_condition.objects] == [f"raw_drops__{model}"]
    assert timetable.timetable.expression == "0 3 * * 1"
    assert [o.name for o in dag.get_task("promote").outlets] == [f"champion__{model}"]


@pytest.mark.parametrize("model", MODELS)
def test_stage_tasks_match_dvc_stages_and_params_sections(bag, model):
    dag = bag.dags[f"lifecycle__{model}"]
    stages = set(yaml.safe_load((ROOT / "projects" / model / "dvc.yaml").read_text())["stages"])
    params = set(yaml.safe_load((ROOT / "projects" / model / "params.yaml").read_text()))
    assert stages <= set(dag.task_ids) and stages <= params
    assert {"snapshot", "approve", "promote", "notify_serving", "lineage", "finish"} <= set(dag.task_ids)
    order = ["snapshot", "validate", "prepare", "train", "evaluate", "gate"]
    for up, down in zip(order, order[1:]):
        assert down in dag.get_task(up).downstream_task_ids
    train = dag.get_task("train")
    assert train.pool == "gpu" and train.queue == "gpu" and train.execution_timeout is not None and train.retries >= 1
    assert all(dag.get_task(t).queue != "gpu" for t in dag.task_ids if t != "train")
    assert dag.get_task("finish").is_teardown
    assert dag.get_task("promote").trigger_rule == "none_failed_min_one_success"


def test_form_fields_are_the_ones_pipelines_checks_again(bag):
    from pipelines.orchestration.runconf import RunConf

    for dag_id in LIFECYCLES:
        assert set(bag.dags[dag_id].params) == set(RunConf.model_fields)


@pytest.mark.parametrize("conf, ok", [
    ({}, True),
    ({"epochs": 3, "lora_rank": 8, "base_model": "minilm", "require_approval": True}, True),
    ({"epochs": 0}, False), ({"epochs": 999}, False), ({"dataset": "/etc/passwd"}, False),
    ({"base_model": "some/hub-model"}, False), ({"lora_rank": 7}, False), ({"learning_rate": 1.0}, False),
    ({"min_accuracy": 0.1}, False), ({"min_macro_f1": 2}, False),
])
def test_form_schema_accepts_and_refuses(bag, conf, ok):
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    bound = copy.deepcopy(bag.dags["lifecycle__text-classifier"].params)
    try:
        bound.update(conf)  # assigning a value validates it against the Param's JSON Schema
        bound.validate()
        accepted = True
    except ParamValidationError:
        accepted = False
    assert accepted is ok, conf


def test_rollback_and_arrival_dags(bag):
    rollback = bag.dags["rollback"]
    assert type(rollback.timetable).__name__ == "NullTimetable"  # manual only
    assert {"model", "to_version", "reason"} == set(rollback.params)
    assert rollback.params.get_param("model").schema["enum"] == MODELS
    arrival = bag.dags["data_arrival"]
    for model in MODELS:
        assert [o.name for o in arrival.get_task(f"detect__{model}").outlets] == [f"raw_drops__{model}"]


def test_adding_a_model_is_adding_a_folder_and_a_broken_one_breaks_only_itself(tmp_path):
    """A copy of the DAG folder over a projects/ with a new model and a broken one: no DAG code changed."""
    import shutil

    shutil.copytree(DAGS, tmp_path / "dags")
    for model in MODELS:
        shutil.copytree(ROOT / "projects" / model, tmp_path / "projects" / model, symlinks=True)
    shutil.copytree(ROOT / "projects" / "text-classifier", tmp_path / "projects" / "fraud-flags")
    params = tmp_path / "projects" / "fraud-flags" / "params.yaml"
    values = yaml.safe_load(params.read_text())
    values["registry"]["model_name"] = "fraud-flags"
    values.setdefault("lifecycle", {}).update(approvers=["ana", "bo"], approval_timeout_h=8, run_deadline_h=2)
    params.write_text(yaml.safe_dump(values))
    (tmp_path / "projects" / "broken").mkdir()
    (tmp_path / "projects" / "broken" / "params.yaml").write_text("train: {epochs: -1}\n")
    probe = ("import json, sys; sys.path.insert(0, sys.argv[1]); from airflow.dag_processing.dagbag import DagBag; "
             "b = DagBag(dag_folder=sys.argv[1]); "
             "d = b.dags.get('lifecycle__broken'); print(json.dumps({'errors': list(b.import_errors), "
             "'dags': sorted(b.dags), 'broken': d and d.description, "
             "'approvers': b.dags['lifecycle__fraud-flags'].get_task('approve').assigned_users, "
             "'timeout': b.dags['lifecycle__fraud-flags'].get_task('approve').response_timeout.total_seconds(), "
             "'deadlines': {m: [(type(d.reference).__name__, d.interval.total_seconds(), d.callback.path, "
             "d.callback.kwargs) for d in (b.dags[m].deadline or [])] for m in ('lifecycle__fraud-flags', "
             "'lifecycle__text-classifier')}}))")
    env = {**os.environ, "PIPELINES_REPO": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "dags")}
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "dags")], env=env, capture_output=True,
                         text=True, timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == [] and {"lifecycle__fraud-flags", "lifecycle__broken", *LIFECYCLES} <= set(result["dags"])
    assert "train.epochs" in result["broken"]
    assert result["approvers"] == [{"id": "ana", "name": "ana"}, {"id": "bo", "name": "bo"}]  # lifecycle.approvers
    assert result["timeout"] == 8 * 3600
    # the run-level deadline alert: lifecycle.run_deadline_h after the run was queued, the alert callback
    callback = "pipelines.orchestration.alerts.run_overdue"
    assert result["deadlines"] == {
        "lifecycle__fraud-flags": [["DagRunQueuedAtDeadline", 2 * 3600, callback,
                                    {"model": "fraud-flags", "hours": 2, "webhook_env": "PIPELINES_ALERT_WEBHOOK"}]],
        "lifecycle__text-classifier": []}  # off by default (run_deadline_h: null)


class _Ti:
    """What the approval step's resume needs of its task instance: the gate's run pointer by XCom."""

    map_index = -1

    def xcom_pull(self, task_ids):
        return {"task_ids": task_ids}

    def xcom_push(self, key, value):  # Airflow's skip bookkeeping on Reject
        pass


@pytest.mark.parametrize("answer, skips", [("Approve", False), ("Reject", True)])
def test_the_approval_step_records_the_answer_either_way(bag, monkeypatch, answer, skips):
    """Only Airflow's answer event resumes the approval step: it keeps who answered what, and when, in the
    run's record in git (`steps.record_review`), where `promote` and `lineage` read it; on Reject Airflow's
    ApprovalOperator then skips `promote` by raising."""
    import sys
    from datetime import datetime, timezone

    from airflow.sdk.exceptions import DownstreamTasksSkipped

    from pipelines.orchestration import steps
    from pipelines.orchestration.records import review

    task = bag.dags["lifecycle__text-classifier"].get_task("approve")
    module = sys.modules[type(task).__module__]
    calls = []
    monkeypatch.setattr(module, "guarded", lambda name, model, fn, *args: calls.append((name, model.name, fn, args)))
    monkeypatch.setattr(module, "run_info", lambda: {"run_id": "r1"})
    monkeypatch.setattr("pipelines.orchestration.runspace.RunRef.of", staticmethod(lambda value: value))
    event = {"chosen_options": [answer], "params_input": {}, "responded_by_user": {"id": "ana", "name": "ana"},
             "responded_at": datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)}
    try:
        task.execute_complete({"ti": _Ti(), "task": task}, event)
        skipped = False
    except DownstreamTasksSkipped as raised:
        skipped = [t if isinstance(t, str) else t[0] for t in raised.tasks] == ["promote"]
    assert skipped is skips
    (name, model, fn, (run, info, said)), = calls
    assert (name, model, fn, run, info) == ("approve", "text-classifier", steps.record_review, {"task_ids": "gate"},
                                            {"run_id": "r1"})
    decision = {"Approve": "approved", "Reject": "rejected"}[answer]
    assert review(said) == {"decision": decision, "by": "ana", "by_id": "ana", "at": "2026-11-26T12:00:00+00:00"}
