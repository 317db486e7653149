import json
import math

import numpy as np
import pandas as pd
import pytest

from pipelines.core.config import GateParams, parse_params
from pipelines.stages.evaluate import classification_metrics, rouge_l
from pipelines.stages.gate import beats_base_rule, decide, floor_rules, latency_rule, mcnemar_p, regression_rule
from pipelines.training.modeling import candidate_hash


def test_classification_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 2])
    probs = np.array([[.9, .1, 0], [.2, .8, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]])
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m["min_class_recall"] == 0.5
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 1) / 3)
    assert 0 <= m["ece"] <= 1


@pytest.mark.parametrize("cand, ref, expected", [("a b c", "a b c", 1.0), ("a x c", "a b c", 2 / 3),
                                                 ("", "a", 0.0), ("z", "a b", 0.0)])
def test_rouge_l(cand, ref, expected):
    assert rouge_l(cand, ref) == pytest.approx(expected)


def test_mcnemar_is_symmetric_and_significant_only_with_many_discordant_pairs():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(3, 1) == pytest.approx(mcnemar_p(1, 3))
    assert mcnemar_p(2, 1) > 0.5 and mcnemar_p(25, 5) < 0.001


GATE = GateParams()


@pytest.mark.parametrize("metrics, failing", [
    ({"accuracy": .9, "macro_f1": .9, "min_class_recall": .8, "latency_p95_ms": 10}, []),
    ({"accuracy": .5, "macro_f1": .9, "min_class_recall": .8, "latency_p95_ms": 10}, ["min_accuracy"]),
    ({"accuracy": .9, "macro_f1": .9, "min_class_recall": .1, "latency_p95_ms": 10}, ["min_class_recall"]),
    ({"accuracy": .9, "macro_f1": .9, "min_class_recall": .8, "latency_p95_ms": 900}, ["max_p95_latency_ms"]),
    ({"accuracy": math.nan, "macro_f1": .9, "min_class_recall": .8, "latency_p95_ms": 10}, ["min_accuracy"]),
    ({"macro_f1": .9, "min_class_recall": .8, "latency_p95_ms": 10}, ["min_accuracy"]),
])
def test_floor_rules_fail_closed(metrics, failing):
    rules = floor_rules("classification", metrics, GATE)
    assert [r["rule"] for r in rules if not r["passed"]] == failing


@pytest.mark.parametrize("candidate, passed, measured", [
    ({"latency_p95_ms": 12.0, "latency_ratio_vs_champion": 1.2}, True, 1.2),
    ({"latency_p95_ms": 16.0, "latency_ratio_vs_champion": 1.6}, False, 1.6),  # half as slow again
    ({"latency_p95_ms": 900.0, "latency_ratio_vs_champion": 1.05}, True, 1.05),  # a busy machine slowed both
    ({"latency_p95_ms": 10.0}, False, None),  # not measured side by side: fail closed
    ({"latency_p95_ms": 10.0, "latency_ratio_vs_champion": math.nan}, False, None),
])
def test_latency_is_judged_against_the_champion_measured_side_by_side(candidate, passed, measured):
    rule = latency_rule({"candidate": candidate, "champion": {"latency_p95_ms": 10.0}}, GATE)
    assert (rule["rule"], rule["passed"], rule["measured"], rule["threshold"]) == (
        "max_latency_ratio", passed, measured, 1.5)
    assert latency_rule({"candidate": {"rouge_l": .5}, "champion": {"rouge_l": .4}}, GATE) is None  # no such latency


CAUSAL = {"perplexity": 3.0, "rouge_l": .6, "exact_match": .2, "json_valid": 1.0, "field_match": .8,
          "answer_pii": 0.0, "ttft_p95_ms": 120.0}


@pytest.mark.parametrize("changed, gate, failing", [
    ({}, {}, []),
    ({"answer_pii": 0.05}, {}, ["max_answer_pii"]),  # one answer in twenty carried PII: rejected by default
    ({"answer_pii": 0.05}, {"max_answer_pii": 0.1}, []),
    ({"ttft_p95_ms": 900.0}, {"max_ttft_p95_ms": 500.0}, ["max_ttft_p95_ms"]),
    ({"ttft_p95_ms": None}, {"max_ttft_p95_ms": 500.0}, ["max_ttft_p95_ms"]),  # not measured: fail closed
    ({"answer_pii": None}, {}, ["max_answer_pii"]),
])
def test_generative_answer_rules(changed, gate, failing):
    metrics = {k: v for k, v in {**CAUSAL, **changed}.items() if v is not None}
    rules = floor_rules("causal_lm", metrics, GateParams(**gate))
    assert [r["rule"] for r in rules if not r["passed"]] == failing


def paired(cand: list[int], champ: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"candidate_correct": np.array(cand, float), "champion_correct": np.array(champ, float)})


@pytest.mark.parametrize("significance", ["mcnemar", "bootstrap"])
def test_regression_rule(significance):
    gate = GateParams(significance=significance)
    same = [1] * 80 + [0] * 20
    worse = [1] * 50 + [0] * 50
    assert regression_rule("classification", paired(same, same), gate)["passed"]
    assert not regression_rule("classification", paired(worse, same), gate)["passed"]
    slightly = [1] * 78 + [0] * 22  # two more errors: not significant
    assert regression_rule("classification", paired(slightly, same), gate)["passed"]
    strict = GateParams(significance=significance, require_improvement=True)
    assert not regression_rule("classification", paired(same, same), strict)["passed"]
    assert regression_rule("classification", paired(same, worse), strict)["passed"]


def _candidate(root):
    (root / "cand" / "adapter").mkdir(parents=True)
    (root / "cand" / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    return root / "cand"


def _params(root):
    return parse_params({"train": {"output_dir": str(root / "cand")},
                         "evaluate": {"report_dir": str(root / "eval")},
                         "gate": {"decision_path": str(root / "decision.json")}})


def _evaluation(root, cand_hash, **metrics):
    (root / "eval").mkdir(exist_ok=True)
    doc = {"task": "classification", "candidate_hash": cand_hash, "champion": None,
           "candidate": {"accuracy": .9, "macro_f1": .9, "min_class_recall": .8, "latency_p95_ms": 10, **metrics}}
    (root / "eval" / "metrics.json").write_text(json.dumps(doc))
    paired([1, 0], [1, 0]).to_parquet(root / "eval" / "predictions.parquet")


def test_decision_passes_for_the_evaluated_candidate(tmp_path):
    _evaluation(tmp_path, candidate_hash(_candidate(tmp_path)))
    decision = decide(_params(tmp_path))
    assert decision["passed"] and decision["candidate_hash"] == candidate_hash(tmp_path / "cand")


def test_decision_fails_when_the_candidate_changed_after_evaluation(tmp_path):
    _evaluation(tmp_path, candidate_hash(_candidate(tmp_path)))
    (tmp_path / "cand" / "adapter" / "adapter_model.safetensors").write_bytes(b"other weights")
    decision = decide(_params(tmp_path))
    assert not decision["passed"]
    assert [r["rule"] for r in decision["rules"] if not r["passed"]] == ["candidate_identity"]


@pytest.mark.parametrize("breakage", ["no_metrics", "garbage_metrics", "list_metrics", "candidate_not_object",
                                      "no_candidate"])
def test_decision_fails_closed_on_missing_or_crashed_evaluation(tmp_path, breakage):
    _candidate(tmp_path)
    _evaluation(tmp_path, candidate_hash(tmp_path / "cand"))
    if breakage == "no_metrics":
        (tmp_path / "eval" / "metrics.json").unlink()
    elif breakage == "garbage_metrics":
        (tmp_path / "eval" / "metrics.json").write_text("{truncated")
    elif breakage == "list_metrics":  # valid JSON of the wrong shape: an exit 3 crash before issue 10
        (tmp_path / "eval" / "metrics.json").write_text("[1, 2]")
    elif breakage == "candidate_not_object":
        (tmp_path / "eval" / "metrics.json").write_text('{"candidate": "0.99", "candidate_hash": null}')
    else:
        import shutil
        shutil.rmtree(tmp_path / "cand")
    assert decide(_params(tmp_path))["passed"] is False


def versus_base(cand: list[float], base: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"candidate_rouge_l": np.array(cand, float), "base_rouge_l": np.array(base, float)})


NAN = float("nan")


@pytest.mark.parametrize("per, passed, detail", [
    (versus_base([0.8, 0.6, 0.9, 0.7] * 10, [0.1, 0.2, 0.0, 0.1] * 10), True, "significantly better"),
    (versus_base([0.3, 0.2, 0.4, 0.1] * 10, [0.3, 0.2, 0.4, 0.1] * 10), False, "bought nothing"),  # as good
    (versus_base([0.1, 0.0, 0.2, 0.1] * 10, [0.8, 0.6, 0.9, 0.7] * 10), False, "bought nothing"),  # worse
    (versus_base([0.8, 0.6] * 10 + [0.0] * 20, [0.1, 0.2] * 10 + [NAN] * 20), True, "significantly"),  # base_examples
    (versus_base([0.8, 0.6], [NAN, NAN]), False, "missing"),
    (versus_base([0.8, 0.6], [0.1, 0.2]).drop(columns="base_rouge_l"), False, "compare_base"),
])
def test_beats_base_rule(per, passed, detail):
    rule = beats_base_rule("causal_lm", per, GateParams())
    assert rule["rule"] == "beats_base" and rule["passed"] is passed and detail in rule["detail"]
    if rule["measured"]:
        assert rule["measured"]["examples"] == int(per.dropna().shape[0])
