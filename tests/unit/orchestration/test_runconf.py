"""A run's form values: re-checked against the model's params, turned into overrides, applied to the
workspace's params file with comments kept, and never written when the stages would reject it."""
from __future__ import annotations

import pytest

from pipelines.core.config import load_params
from pipelines.core.errors import ConfigError
from pipelines.orchestration.runconf import apply_overrides, check_conf, overrides
from tests.conftest import ROOT

PARAMS = ROOT / "projects" / "text-classifier" / "params.yaml"


@pytest.fixture
def params():
    return load_params(PARAMS)


@pytest.mark.parametrize("conf, message", [
    ({"dataset": "../../etc"}, "dataset '../../etc' is not one of ['default']"),
    ({"base_model": "meta-llama/Llama-3-8B"}, "base_model 'meta-llama/Llama-3-8B' is not in the allowlist"),
    ({"epochs": 0}, "epochs must be 1..20"), ({"epochs": 21}, "epochs must be 1..20"),
    ({"learning_rate": 0.5}, "learning_rate must be within"), ({"lora_rank": 12}, "lora_rank must be one of"),
    ({"min_accuracy": 0.2}, "min_accuracy must be within [0.5, 1]"), ({"min_macro_f1": 1.5}, "min_macro_f1 must be within"),
    ({"epochs": "three"}, "invalid 'epochs'"), ({"path": "/data"}, "unknown field 'path'"),
])
def test_run_values_are_checked_again(params, conf, message):
    with pytest.raises(ConfigError) as err:
        check_conf(conf, params)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_only_changed_values_become_overrides(params):
    same = check_conf({"epochs": params.train.epochs, "dataset": "default"}, params)
    assert overrides(same, params) == {}
    conf = check_conf({"epochs": 3, "lora_rank": 8, "min_accuracy": 0.8}, params)
    assert overrides(conf, params) == {
        "train": {"epochs": 3, "lora": {"r": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": None}},
        "gate": {"min_accuracy": 0.8}}


def test_overrides_are_written_with_comments_kept(tmp_path, params):
    target = tmp_path / "params.yaml"
    target.write_text(PARAMS.read_text())
    assert apply_overrides(target, overrides(check_conf({"epochs": 3, "min_accuracy": 0.8}, params), params))
    text = target.read_text()
    assert "# One model of the platform" in text and "# the promotion policy" in text
    written = load_params(target)
    assert written.train.epochs == 3 and written.gate.min_accuracy == 0.8
    assert not apply_overrides(target, {})


def test_a_params_file_the_stages_would_reject_is_never_written(tmp_path):
    target = tmp_path / "params.yaml"
    target.write_text(PARAMS.read_text())
    with pytest.raises(ConfigError, match="train.epochs"):
        apply_overrides(target, {"train": {"epochs": -1}})
    assert target.read_text() == PARAMS.read_text()
