import pytest

from pipelines.core.config import DataParams, Params, load_params, parse_params, with_overrides
from pipelines.core.errors import ConfigError
from tests.conftest import ROOT


def test_repo_params_yaml_parses():
    params = load_params(ROOT / "projects" / "text-classifier" / "params.yaml")
    assert params.data.task == "classification"
    assert params.validate_.quarantine_tolerance == 0.01
    assert params.prepare.split.train == 0.8


def test_a_missing_params_file_is_an_error_never_the_defaults(tmp_path):
    with pytest.raises(ConfigError, match="params file .*nope.yaml not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is not a file"):
        load_params(tmp_path)


@pytest.mark.parametrize("raw, fragment", [
    ({"validate": {"max_dupe_rate": 0.1}}, "unknown key 'validate.max_dupe_rate'"),
    ({"datta": {}}, "unknown key 'datta'"),
    ({"data": {"task": "regression"}}, "invalid value for 'data.task'"),
    ({"data": {"pii_policy": "ignore"}}, "invalid value for 'data.pii_policy'"),
    ({"data": {"pii_detectors": ["email", "ssn"]}}, "invalid value for 'data.pii_detectors"),
    ({"validate": {"max_duplicate_rate": 1.5}}, "invalid value for 'validate.max_duplicate_rate'"),
    ({"validate": {"text_length": {"min": 10, "max": 5}}}, "min (10) is greater than max (5)"),
    ({"prepare": {"split": {"train": 0.5, "validation": 0.1, "test": 0.1}}}, "must be 1.0"),
    ({"prepare": {"seed": "abc"}}, "invalid value for 'prepare.seed'"),
    ({"train": {"lora": {"rank": 8}}}, "unknown key 'train.lora.rank'"),
    ({"train": {"quantization": "8bit"}}, "invalid value for 'train.quantization'"),
    ({"train": {"epochs": 0}}, "invalid value for 'train.epochs'"),
    (["not", "a", "mapping"], "expected a mapping"),
    ({"cost": {"serve_on": "tpu-v9"}}, "unknown hardware kind 'tpu-v9' (known: cpu-2vcpu"),
    ({"cost": {"compare_with": ["gpt-9"]}}, "compare_with: no price for 'gpt-9'"),
    ({"cost": {"workers_on": "tpu-v9"}}, "workers_on: unknown hardware kind 'tpu-v9'"),
    ({"route": {"upstream_accuracy": 1.5}}, "invalid value for 'route.upstream_accuracy'"),
    ({"route": {"floor": 0.9}}, "route.floor"),
    ({"serve": {"fallback": {"classify_threshold": "auto"}}}, "serve.fallback.classify_threshold"),
    ({"cost": {"hardware": {"gpu-h100": {"usd_per_hour": -2, "as_of": "2026-01-01", "source": "x"}}}},
     "invalid value for 'cost.hardware.gpu-h100.usd_per_hour'"),
    ({"cost": {"hardware": {"rack": {"as_of": "2026-01-01", "source": "invoice"}}}},
     "invalid value for 'cost.hardware.rack.usd_per_hour': Field required"),
    ({"cost": {"api": {"gpt-4o": {"usd_per_1m_input": 2.5, "usd_per_1m_output": 10, "source": "x"}}}},
     "invalid value for 'cost.api.gpt-4o.as_of': Field required"),  # a price without its date
    ({"cost": {"api": {"gpt-4o": {"usd_per_1m_input": 2.5, "usd_per_1m_output": 10, "as_of": "2026-01-01",
                                  "source": ""}}}}, "invalid value for 'cost.api.gpt-4o.source'"),
    ({"cost": {"latency_slo_p99_ms": 0}}, "invalid value for 'cost.latency_slo_p99_ms'"),
])
def test_bad_params_are_rejected_with_the_key_named(raw, fragment):
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_lifecycle_and_lineage_sections_are_validated_too():
    params = parse_params({"lineage": {"branch": "audit/runs"}, "lifecycle": {"datasets": {"weekly": "data/w"}}})
    assert params.lineage.branch == "audit/runs" and params.lifecycle.datasets == {"weekly": "data/w"}
    with pytest.raises(ConfigError, match="unknown key 'lineage.anything'"):
        parse_params({"lineage": {"anything": 3}})
    with pytest.raises(ConfigError, match="lifecycle"):
        parse_params({"lifecycle": {"datasets": {"../etc": "x"}}})


def test_prices_start_from_dated_sourced_defaults_and_a_params_file_adds_or_overrides_by_name():
    from pipelines.core.config import API_PRICES, HARDWARE_PRICES

    default = Params().cost
    assert set(default.hardware) == set(HARDWARE_PRICES) and set(default.api) == set(API_PRICES)
    assert all(p.source.startswith("https://") and p.as_of.year >= 2025 for p in [*default.hardware.values(),
                                                                                   *default.api.values()])
    own = parse_params({"cost": {"hardware": {"rack": {"usd_per_hour": 0.9, "as_of": "2026-11-01", "source": "invoice"},
                                              "gpu-h100": {"usd_per_hour": 2.1, "as_of": "2026-11-01", "source": "quote"}},
                                 "serve_on": "rack"}}).cost
    assert own.hardware["rack"].usd_per_hour == 0.9 and own.hardware["gpu-h100"].usd_per_hour == 2.1
    assert own.hardware["gpu-a10g"] == default.hardware["gpu-a10g"] and own.serve_on == "rack"


def test_params_are_frozen():
    with pytest.raises(Exception):
        DataParams().task = "causal_lm"


def test_invalid_yaml_is_a_config_error(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_overrides_are_revalidated():
    data = with_overrides(DataParams(), text_column="body", label_column=None)
    assert (data.text_column, data.label_column) == ("body", "label")
    with pytest.raises(ConfigError, match="command line"):
        with_overrides(DataParams(), task="nonsense")


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in (ROOT / "projects").glob("*/params.yaml")))
def test_every_param_a_dvc_stage_names_is_written_in_the_model_params(folder):
    """DVC reads a stage's `params` from the params file itself: a key left to its pydantic default is
    'missing' to DVC and fails the stage."""
    import yaml

    written = yaml.safe_load((ROOT / "projects" / folder / "params.yaml").read_text())
    stages = yaml.safe_load((ROOT / "projects" / folder / "dvc.yaml").read_text())["stages"]
    missing = []
    for name, stage in stages.items():
        for key in stage.get("params", []):
            node = written
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) and part in node else missing.append(f"{name}: {key}")
                if node is None:
                    break
    assert missing == []
