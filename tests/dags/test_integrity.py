"""DAG integrity: the files parse without errors, fast, without importing the heavy stack, and the
lifecycle DAG is wired the way its docs say (schedule, serialisation, pools, form, stage names)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

DAGS = ROOT / "dags"
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
    assert set(bag.dags) == {"model_lifecycle", "rollback", "data_arrival"}


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


@pytest.mark.parametrize("name", ["model_lifecycle.py", "rollback.py", "data_arrival.py"])
def test_parse_is_light_and_fast(name):
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    out = subprocess.run([sys.executable, "-c", PROBE, str(DAGS / name), str(DAGS)], env=env, capture_output=True, text=True,
                         timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == [] and result["dags"]
    assert result["heavy"] == [], f"{name} imports {result['heavy']} at parse time"
    assert result["seconds"] < 1.0, f"{name} took {result['seconds']:.2f} s to parse"


def test_lifecycle_schedule_serialisation_and_doc(bag):
    dag = bag.dags["model_lifecycle"]
    assert dag.max_active_runs == 1 and dag.catchup is False and dag.doc_md and "mlops" in dag.tags
    timetable = dag.timetable
    assert type(timetable).__name__ == "AssetOrTimeSchedule"
    assert [a.name for a in timetable.asset_condition.objects] == ["raw_drops"]
    assert timetable.timetable.expression == "0 3 * * 1"


def test_stage_tasks_match_dvc_stages_and_params_sections(bag):
    dag = bag.dags["model_lifecycle"]
    stages = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    params = set(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert stages <= set(dag.task_ids) and stages <= params
    assert {"snapshot", "approve", "promote", "notify_serving", "lineage", "finish"} <= set(dag.task_ids)
    order = ["snapshot", "validate", "prepare", "train", "evaluate", "gate"]
    for up, down in zip(order, order[1:]):
        assert down in dag.get_task(up).downstream_task_ids
    train = dag.get_task("train")
    assert train.pool == "gpu" and train.execution_timeout is not None and train.retries >= 1
    assert dag.get_task("finish").is_teardown
    assert dag.get_task("promote").trigger_rule == "none_failed_min_one_success"


def test_form_fields_are_the_ones_pipelines_checks_again(bag):
    from pipelines.lifecycle import RunConf

    dag = bag.dags["model_lifecycle"]
    assert set(dag.params) == set(RunConf.model_fields)


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

    bound = copy.deepcopy(bag.dags["model_lifecycle"].params)
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
    arrival = bag.dags["data_arrival"]
    outlets = arrival.get_task("detect_new_drop").outlets
    assert [o.name for o in outlets] == ["raw_drops"]
