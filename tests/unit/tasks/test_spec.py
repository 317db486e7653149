import pytest

from pipelines.core.config import GateParams, parse_params
from pipelines.core.errors import ConfigError
from pipelines.tasks import TaskSpec, names, register, task_spec
from pipelines.tasks.spec import _REGISTRY


def test_the_shipped_tasks_are_registered():
    assert names() == ("causal_lm", "classification")
    assert task_spec("classification").labelled and task_spec("causal_lm").generative


@pytest.mark.parametrize("task", names())
def test_every_gate_floor_is_a_gate_param(task):
    for rule, _, kind in task_spec(task).gate_floors:
        assert rule in GateParams.model_fields, rule
        assert kind in ("min", "max") and rule.startswith(kind)


@pytest.mark.parametrize("task", names())
def test_every_route_is_served(task, tmp_path):
    from pipelines.serving.app import create_app

    params = parse_params({"data": {"task": task}, "registry": {"root": str(tmp_path)}})
    paths = {route.path for route in create_app(params, poll=False).routes}
    assert set(task_spec(task).routes) <= paths


def test_an_unknown_task_in_params_names_the_known_ones():
    with pytest.raises(ConfigError) as err:
        parse_params({"data": {"task": "regression"}})
    assert "'data.task'" in str(err.value) and "causal_lm, classification" in str(err.value)


def test_a_new_task_is_one_registration_and_params_accept_it():
    spec = TaskSpec(name="ranking", labelled=True, auto_model="AutoModelForSequenceClassification",
                    peft_task_type="SEQ_CLS", gate_floors=(), paired_score="correct", paired_test="mcnemar",
                    routes=("/v1/classify",), headline="accuracy")
    try:
        register(spec)
        assert parse_params({"data": {"task": "ranking"}}).data.task == "ranking"
        with pytest.raises(ValueError, match="already registered differently"):
            register(TaskSpec(**{**spec.__dict__, "labelled": False}))
    finally:
        _REGISTRY.pop("ranking", None)
