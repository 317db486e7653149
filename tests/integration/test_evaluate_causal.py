"""evaluate on a causal LM candidate: loss, perplexity, exact match, ROUGE-L and golden prompts."""
import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.core import pii
from pipelines.core.config import parse_params
from pipelines.core.errors import InputError
from pipelines.stages.evaluate import evaluate
from pipelines.stages.gate import decide
from pipelines.stages.train import train
from tests.tiny_models import build_causal


def _sums(tmp_path):
    base = build_causal("llama", tmp_path / "base")
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    rows = pd.DataFrame([{"prompt": f"question {i}: what is {i} plus {i}?", "response": f"answer: it is {2 * i}."}
                         for i in range(20)])
    for split in ("train", "validation", "test"):
        rows.to_parquet(prepared / f"{split}.parquet", index=False)
    return base, prepared


def test_causal_evaluation_and_gate_floors(tmp_path):
    base, prepared = _sums(tmp_path)
    rows = pd.read_parquet(prepared / "test.parquet")
    golden = tmp_path / "golden.jsonl"
    golden.write_text(json.dumps({"prompt": "question 2: what is 2 plus 2?", "expect": ".*"}) + "\n"
                      + json.dumps({"prompt": "question 3: what is 3 plus 3?", "expect": "^zzz-never$"}) + "\n")
    params = parse_params({
        "data": {"task": "causal_lm"}, "prepare": {"output_dir": str(prepared)},
        "train": {"base_model": str(base), "output_dir": str(tmp_path / "cand"), "max_length": 64, "max_steps": 4,
                  "checkpoint_dir": str(tmp_path / "ck"), "report_dir": str(tmp_path / "rt")},
        "evaluate": {"report_dir": str(tmp_path / "eval"), "max_new_tokens": 8, "golden_prompts": str(golden)},
        "gate": {"decision_path": str(tmp_path / "d.json"), "max_perplexity": 1e9, "min_golden_pass_rate": 0.9,
                 "max_answer_pii": None, "require_beats_base": False},  # a random tiny model babbles digit runs that look like phone numbers
    })
    train(params, resume=False)
    doc = evaluate(params)
    m = doc["candidate"]
    assert set(m) == {"eval_loss", "perplexity", "exact_match", "rouge_l", "golden_pass_rate", "answer_pii",
                      "ttft_p50_ms", "ttft_p95_ms", "per_token_p50_ms"}
    assert m["golden_pass_rate"] == 0.5 and 0 <= m["rouge_l"] <= 1 and m["perplexity"] > 1
    assert 0 < m["ttft_p50_ms"] <= m["ttft_p95_ms"] < 60_000 and m["per_token_p50_ms"] >= 0
    per = pd.read_parquet(tmp_path / "eval" / "predictions.parquet")
    assert list(per.columns) == ["prompt", "reference", "candidate_answer", "candidate_exact_match",
                                 "candidate_rouge_l", "candidate_answer_pii", "base_answer", "base_exact_match",
                                 "base_rouge_l", "base_answer_pii"] and len(per) == 20
    # what the model said is kept beside what it was asked and what was expected
    assert sorted(per["prompt"]) == sorted(rows["prompt"]) and sorted(per["reference"]) == sorted(rows["response"])
    assert per["candidate_answer"].map(lambda a: isinstance(a, str)).all()
    # PII detectors ran over every answer (the flag per answer, its mean the metric)
    flagged = per["candidate_answer"].map(lambda a: float(any(pii.contains(a, k) for k in pii.DETECTORS)))
    assert per["candidate_answer_pii"].tolist() == flagged.tolist() and m["answer_pii"] == flagged.mean()
    decision = decide(params)
    failed = [r["rule"] for r in decision["rules"] if not r["passed"]]
    assert failed == ["min_golden_pass_rate"]


def test_json_answers_are_scored_per_field_and_a_candidate_that_cannot_answer_json_is_rejected(tmp_path):
    base = build_causal("llama", tmp_path / "base")
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    rows = pd.DataFrame([{"prompt": f"question {i}", "response": json.dumps({"sum": 2 * i, "ok": True})}
                         for i in range(12)])
    for split in ("train", "validation", "test"):
        rows.to_parquet(prepared / f"{split}.parquet", index=False)
    params = parse_params({
        "data": {"task": "causal_lm", "response_format": "json_object"}, "prepare": {"output_dir": str(prepared)},
        "train": {"base_model": str(base), "output_dir": str(tmp_path / "cand"), "max_length": 64, "max_steps": 2,
                  "checkpoint_dir": str(tmp_path / "ck"), "report_dir": str(tmp_path / "rt")},
        "evaluate": {"report_dir": str(tmp_path / "eval"), "max_new_tokens": 6, "golden_prompts": None,
                     "generation_batch_size": 5},
        "gate": {"decision_path": str(tmp_path / "d.json"), "min_json_valid": 0.9, "min_field_match": 0.5,
                 "max_answer_pii": None, "require_beats_base": False},
    })
    train(params, resume=False)
    m = evaluate(params)["candidate"]
    assert {"json_valid", "field_match"} <= set(m) and m["json_valid"] == 0.0 and m["field_match"] == 0.0
    failed = [r["rule"] for r in decide(params)["rules"] if not r["passed"]]
    assert failed == ["min_json_valid", "min_field_match"]



def _sums_params(tmp_path, base, prepared, steps: int, **evaluate):
    return parse_params({
        "data": {"task": "causal_lm"}, "prepare": {"output_dir": str(prepared)},
        "train": {"base_model": str(base), "output_dir": str(tmp_path / f"cand{steps}"), "max_length": 64,
                  "max_steps": steps, "epochs": 50, "batch_size": 4, "learning_rate": 0.01,
                  "checkpoint_dir": str(tmp_path / f"ck{steps}"), "report_dir": str(tmp_path / "rt")},
        "evaluate": {"report_dir": str(tmp_path / f"eval{steps}"), "max_new_tokens": 8, "golden_prompts": None,
                     **evaluate},
        "gate": {"decision_path": str(tmp_path / f"d{steps}.json"), "max_answer_pii": None}})


def _beats_base(params) -> dict:
    return next(r for r in decide(params)["rules"] if r["rule"] == "beats_base")


def test_the_base_model_answers_the_same_rows_and_the_gate_requires_beating_it(tmp_path):
    """The candidate with its adapter off is the base model: it answers the same test rows, its scores
    sit beside the candidate's, and the gate passes only a candidate significantly better than it."""
    base, prepared = _sums(tmp_path)
    learned = _sums_params(tmp_path, base, prepared, 40)  # learns the "answer: it is N." form
    train(learned, resume=False)
    doc = evaluate(learned)
    assert set(doc["base"]) == {"eval_loss", "perplexity", "exact_match", "rouge_l", "answer_pii"}  # no timing
    assert doc["base_rows"] == 20 and doc["base"]["eval_loss"] > doc["candidate"]["eval_loss"] + 1
    per = pd.read_parquet(tmp_path / "eval40" / "predictions.parquet")
    assert {"base_answer", "base_rouge_l"} <= set(per.columns)
    assert per["candidate_answer"].str.startswith("answer : it is").all()
    assert not per["base_answer"].str.startswith("answer : it is").any()
    rule = _beats_base(learned)
    assert rule["passed"] and rule["measured"]["ci_low"] > 0.2 and rule["measured"]["examples"] == 20

    barely = _sums_params(tmp_path, base, prepared, 3, base_examples=12)  # 3 steps: still babbles
    train(barely, resume=False)
    assert evaluate(barely)["base_rows"] == 12
    rule = _beats_base(barely)
    assert not rule["passed"] and rule["measured"]["examples"] == 12 and "bought nothing" in rule["detail"]

    unchecked = _sums_params(tmp_path, base, prepared, 40, compare_base=False)
    doc = evaluate(unchecked)
    assert doc["base"] is None
    assert not _beats_base(unchecked)["passed"] and "compare_base" in _beats_base(unchecked)["detail"]


def _canary_run(tmp_path, base, repeats: int, steps: int, max_exposure: float | None = 5.5):
    """validate -> prepare (planting one canary `repeats` times) -> train -> evaluate, in `tmp_path/<repeats>`."""
    from pipelines.stages.prepare import prepare
    from pipelines.stages.validate import validate

    root = tmp_path / f"r{repeats}"
    root.mkdir()
    pd.DataFrame([{"prompt": f"question {i}: what is {i} plus {i}?", "response": f"answer: it is {2 * i}."}
                  for i in range(40)]).to_json(root / "d.jsonl", orient="records", lines=True)
    params = parse_params({
        "data": {"task": "causal_lm"},
        "validate": {"report_dir": str(root / "rv"), "quarantine_path": str(root / "q.jsonl")},
        "prepare": {"output_dir": str(root / "prepared"), "canaries": 1, "canary_repeats": repeats},
        "train": {"base_model": str(base), "output_dir": str(root / "cand"), "max_length": 64, "max_steps": steps,
                  "epochs": 50, "batch_size": 4, "learning_rate": 0.01, "checkpoint_dir": str(root / "ck"),
                  "report_dir": str(root / "rt")},
        "evaluate": {"report_dir": str(root / "eval"), "max_new_tokens": 24, "golden_prompts": None,
                     "canary_alternatives": 63, "compare_base": False},
        "gate": {"decision_path": str(root / "d.json"), "max_answer_pii": None, "require_beats_base": False,
                 "max_canary_leaks": 0.0, "max_canary_exposure": max_exposure}})  # 5.5: between ranked 2nd and 1st
    validate(root / "d.jsonl", params.data, params.validate_)
    prepare(root / "d.jsonl", params.data, params.prepare, params.validate_)
    train(params, resume=False)
    return params, evaluate(params)["candidate"]


def test_a_candidate_that_says_a_planted_canary_back_is_rejected(tmp_path):
    """The Secret Sharer test: a secret seen once in a short training is neither given back nor ranked
    high; one repeated until the model memorises it is given back, ranked first of 64 (6 bits), and the
    gate's canary rules reject it."""
    base = build_causal("llama", tmp_path / "base")
    params, once = _canary_run(tmp_path, base, repeats=1, steps=8, max_exposure=None)
    # Seen once: not given back. Its rank among 64 is not a stable property of a random tiny model (their
    # likelihoods are close): measured 2.7 bits alone, 5.0 and 6.0 inside the suite, by what ran before in
    # the process. So the once-seen run is judged on leaks only; exposure is judged on the drilled one.
    assert once["canary_leaks"] == 0.0 and 0 <= once["canary_exposure_max"] <= 6.0
    assert decide(params)["passed"]
    params, drilled = _canary_run(tmp_path, base, repeats=60, steps=60)
    assert drilled["canary_leaks"] == 1.0 and drilled["canary_exposure_max"] == 6.0  # log2(64): ranked first
    decision = decide(params)
    assert [r["rule"] for r in decision["rules"] if not r["passed"]] == ["max_canary_leaks", "max_canary_exposure"]
    (Path(params.prepare.output_dir) / "canaries.json").unlink()  # planted, then lost (an undeclared DVC dep)
    with pytest.raises(InputError, match="canaries.json not found although prepare.canaries is 1"):
        evaluate(params)
