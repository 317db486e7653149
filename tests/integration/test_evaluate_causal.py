"""evaluate on a causal LM candidate: loss, perplexity, exact match, ROUGE-L and golden prompts."""
import json

import pandas as pd

from pipelines.core import pii
from pipelines.core.config import parse_params
from pipelines.stages.evaluate import evaluate
from pipelines.stages.gate import decide
from pipelines.stages.train import train
from tests.tiny_models import build_causal


def test_causal_evaluation_and_gate_floors(tmp_path):
    base = build_causal("llama", tmp_path / "base")
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    rows = pd.DataFrame([{"prompt": f"question {i}: what is {i} plus {i}?", "response": f"answer: it is {2 * i}."}
                         for i in range(20)])
    for split in ("train", "validation", "test"):
        rows.to_parquet(prepared / f"{split}.parquet", index=False)
    golden = tmp_path / "golden.jsonl"
    golden.write_text(json.dumps({"prompt": "question 2: what is 2 plus 2?", "expect": ".*"}) + "\n"
                      + json.dumps({"prompt": "question 3: what is 3 plus 3?", "expect": "^zzz-never$"}) + "\n")
    params = parse_params({
        "data": {"task": "causal_lm"}, "prepare": {"output_dir": str(prepared)},
        "train": {"base_model": str(base), "output_dir": str(tmp_path / "cand"), "max_length": 64, "max_steps": 4,
                  "checkpoint_dir": str(tmp_path / "ck"), "report_dir": str(tmp_path / "rt")},
        "evaluate": {"report_dir": str(tmp_path / "eval"), "max_new_tokens": 8, "golden_prompts": str(golden)},
        "gate": {"decision_path": str(tmp_path / "d.json"), "max_perplexity": 1e9, "min_golden_pass_rate": 0.9,
                 "max_answer_pii": None},  # a random tiny model babbles digit runs that look like phone numbers
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
                                 "candidate_rouge_l", "candidate_answer_pii"] and len(per) == 20
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
                 "max_answer_pii": None},
    })
    train(params, resume=False)
    m = evaluate(params)["candidate"]
    assert {"json_valid", "field_match"} <= set(m) and m["json_valid"] == 0.0 and m["field_match"] == 0.0
    failed = [r["rule"] for r in decide(params)["rules"] if not r["passed"]]
    assert failed == ["min_json_valid", "min_field_match"]

