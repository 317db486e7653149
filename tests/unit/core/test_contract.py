"""Each expectation of the contract, on crafted frames, through the real GX suite."""
import json

import pandas as pd
import pytest

from pipelines.core.config import DataParams, ValidateParams
from pipelines.stages.validate import run_suite

LABELS = ("card_arrival", "refund_request", "change_pin")


def frame(rows: list[tuple]) -> pd.DataFrame:
    cols = ["text", "label"] if len(rows[0]) == 2 else list(rows[0][2].keys())
    if len(rows[0]) == 2:
        out = pd.DataFrame(rows, columns=cols)
    else:
        out = pd.DataFrame([r[2] for r in rows])
    out["_source"] = "t.csv"
    out["_row"] = range(1, len(out) + 1)
    return out


def clean_rows(per_label: int = 10) -> list[tuple]:
    return [(f"request number {i} about {label.replace('_', ' ')}", label)
            for label in LABELS for i in range(per_label)]


def with_rows(changes: dict[int, tuple], per_label: int = 10) -> list[tuple]:
    rows = clean_rows(per_label)
    for i, row in changes.items():
        rows[i] = row
    return rows


STRICT = dict(quarantine_tolerance=0.0)
# (case id, rows, rule overrides, data overrides, failing check, example rows)
CASES = [
    ("null text", with_rows({0: (None, "card_arrival")}), STRICT, {}, "text_not_null", ["t.csv:1"]),
    ("blank text", with_rows({3: (" \t ", "card_arrival")}), STRICT, {}, "text_not_blank", ["t.csv:4"]),
    ("text too long", with_rows({2: ("x" * 51, "card_arrival")}), {**STRICT, "text_length": {"min": 1, "max": 50}},
     {}, "text_length", ["t.csv:3"]),
    ("text too short", with_rows({2: ("ok", "card_arrival")}), {**STRICT, "text_length": {"min": 3, "max": 500}},
     {}, "text_length", ["t.csv:3"]),
    ("null label", with_rows({11: ("fine text here", None)}), STRICT, {}, "label_not_null", ["t.csv:12"]),
    ("label stray space", with_rows({12: ("fine text here", "refund_request ")}), STRICT, {}, "label_well_formed",
     ["t.csv:13"]),
    ("label blank", with_rows({13: ("fine text here", "  ")}), STRICT, {}, "label_well_formed", ["t.csv:14"]),
    ("label outside set", with_rows({20: ("fine text here", "unknown_intent")}),
     {**STRICT, "allowed_labels": list(LABELS)}, {}, "label_in_allowed_set", ["t.csv:21"]),
    ("conflicting labels", with_rows({1: ("request number 0 about card arrival", "change_pin")}), STRICT, {},
     "label_conflict", ["t.csv:1", "t.csv:2"]),
    ("email pii (fail)", with_rows({5: ("reach me at jo@example.com", "card_arrival")}), STRICT,
     {"pii_policy": "fail"}, "pii_email_in_text", ["t.csv:6"]),
    ("phone pii (fail)", with_rows({6: ("call +44 7700 900123 now", "card_arrival")}), STRICT,
     {"pii_policy": "fail"}, "pii_phone_in_text", ["t.csv:7"]),
    ("card pii (fail)", with_rows({7: ("card 4539 1488 0343 6467", "card_arrival")}), STRICT,
     {"pii_policy": "fail"}, "pii_card_in_text", ["t.csv:8"]),
    ("iban pii (fail)", with_rows({8: ("IBAN DE89370400440532013000", "card_arrival")}), STRICT,
     {"pii_policy": "fail"}, "pii_iban_in_text", ["t.csv:9"]),
    ("too few per label", clean_rows(4), {"min_examples_per_label": 5}, {}, "min_examples_per_label", []),
    ("imbalance", clean_rows(10) + [(f"more card arrival text {i}", "card_arrival") for i in range(30)],
     {"max_imbalance_ratio": 3}, {}, "max_imbalance_ratio", []),
    ("duplicates", clean_rows(10) + clean_rows(10)[:10], {"max_duplicate_rate": 0.2}, {}, "duplicate_rate",
     ["t.csv:31", "t.csv:32"]),
]


@pytest.mark.parametrize("case, rows, rules, data, check, examples", CASES, ids=[c[0] for c in CASES])
def test_each_expectation_fails_on_its_fault(case, rows, rules, data, check, examples):
    outcome = run_suite(frame(rows), DataParams(**data), ValidateParams(**rules))
    assert outcome.status == "failed"
    failed = {c.check: c for c in outcome.failed}
    assert check in failed, f"{check} not among failed {list(failed)}"
    assert failed[check].examples[: len(examples)] == examples
    assert failed[check].detail


def test_clean_frame_passes_every_check_including_strict_pii():
    outcome = run_suite(frame(clean_rows()), DataParams(pii_policy="fail"),
                        ValidateParams(allowed_labels=list(LABELS), quarantine_tolerance=0.0))
    assert outcome.status == "passed", [(c.check, c.detail) for c in outcome.failed]
    assert len(outcome.quarantine) == 0
    names = [c.check for c in outcome.checks]
    assert len(names) == len(set(names)) >= 14


def test_missing_required_column_fails_and_names_it():
    f = frame(clean_rows()).rename(columns={"label": "intent"})
    outcome = run_suite(f, DataParams(), ValidateParams())
    (failed,) = outcome.failed
    assert failed.check == "required_columns" and "label" in failed.detail


def test_redact_policy_reports_pii_without_failing():
    rows = with_rows({5: ("reach me at jo@example.com", "card_arrival")})
    outcome = run_suite(frame(rows), DataParams(pii_policy="redact"), ValidateParams())
    assert outcome.status == "passed"
    info = {c.check: c for c in outcome.checks}["pii_email_in_text"]
    assert info.level == "info" and info.unexpected_count == 1 and info.examples == ["t.csv:6"]


def test_row_failures_within_tolerance_are_quarantined_with_reasons():
    rows = clean_rows(40) + [("   ", "card_arrival")]  # 1 bad row of 121 < 1%
    outcome = run_suite(frame(rows), DataParams(), ValidateParams(quarantine_tolerance=0.01))
    assert outcome.status == "passed_with_quarantine"
    assert outcome.quarantine["_row"].tolist() == [121]
    assert outcome.quarantine["_reasons"].tolist() == [["text_not_blank"]]


def test_row_failures_beyond_tolerance_fail():
    rows = clean_rows(10) + [("   ", "card_arrival"), (None, "change_pin")]
    outcome = run_suite(frame(rows), DataParams(), ValidateParams(quarantine_tolerance=0.01))
    assert outcome.status == "failed" and len(outcome.quarantine) == 2


def test_causal_lm_prompt_response_and_messages():
    good = [{"prompt": f"question {i}?", "response": f"answer {i}."} for i in range(10)]
    outcome = run_suite(frame([(None, None, r) for r in good]), DataParams(task="causal_lm"), ValidateParams())
    assert outcome.status == "passed", [(c.check, c.detail) for c in outcome.failed]

    msgs = [{"messages": json.dumps([{"role": "user", "content": f"hi {i}"},
                                     {"role": "assistant", "content": f"hello {i}"}])} for i in range(10)]
    msgs[3] = {"messages": json.dumps([{"role": "user", "content": "no answer"}])}
    msgs[4] = {"messages": "not json"}
    outcome = run_suite(frame([(None, None, r) for r in msgs]), DataParams(task="causal_lm"),
                        ValidateParams(quarantine_tolerance=0.0))
    failed = {c.check: c for c in outcome.failed}
    assert failed["messages_well_formed"].examples == ["t.csv:4", "t.csv:5"]


def answer_rows(changes: dict[int, dict] | None = None) -> pd.DataFrame:
    rows = [{"prompt": f"my card {i} has not arrived", "response": json.dumps({"intent": "card_arrival", "n": i})}
            for i in range(12)]
    for i, row in (changes or {}).items():
        rows[i] = row
    return frame([(None, None, r) for r in rows])


JSON_DATA = {"task": "causal_lm", "response_format": "json_object"}
# (case id, changed rows, data overrides, failing check, example rows)
GENERATIVE_CASES = [
    ("no answer", {2: {"prompt": "where is my card", "response": None}}, {}, "response_not_null", ["t.csv:3"]),
    ("answer cut short", {4: {"prompt": "where is it", "response": '{"intent": "card_arr'}}, JSON_DATA,
     "response_json_object", ["t.csv:5"]),
    ("answer a JSON list", {5: {"prompt": "where is it", "response": "[1, 2]"}}, JSON_DATA,
     "response_json_object", ["t.csv:6"]),
    ("PII in an answer under redact", {6: {"prompt": "who do I write to", "response": "write to a.b@example.com"}},
     {"task": "causal_lm", "pii_policy": "redact"}, "pii_email_in_response", ["t.csv:7"]),
    ("one prompt, two answers", {7: {"prompt": "my card 1 has not arrived", "response": '{"intent": "refund"}'}},
     {"task": "causal_lm"}, "response_conflict", ["t.csv:2", "t.csv:8"]),
]


@pytest.mark.parametrize("case, changes, data, check, examples", GENERATIVE_CASES, ids=[c[0] for c in GENERATIVE_CASES])
def test_generative_contract_rejects_each_bad_answer(case, changes, data, check, examples):
    outcome = run_suite(answer_rows(changes), DataParams(**{"task": "causal_lm", **data}), ValidateParams(**STRICT))
    failed = {c.check: c for c in outcome.failed}
    assert check in failed, [(c.check, c.detail) for c in outcome.failed]
    assert failed[check].examples == examples


def test_clean_json_answers_pass_and_pii_in_prompts_is_only_noted_under_redact():
    prompt_pii = {3: {"prompt": "email me at a.b@example.com", "response": json.dumps({"intent": "x"})}}
    outcome = run_suite(answer_rows(prompt_pii), DataParams(**JSON_DATA), ValidateParams(**STRICT))
    assert outcome.status == "passed", [(c.check, c.detail) for c in outcome.failed]


def test_the_support_assistant_sample_passes_and_its_faulty_drop_fails():
    from pipelines.devtools.sample_data import generate_assistant

    def run(f):
        f = f.copy()
        f["_source"], f["_row"] = "s.csv", range(1, len(f) + 1)
        return run_suite(f, DataParams(**JSON_DATA), ValidateParams())
    assert run(generate_assistant(800, seed=0)).status == "passed"
    failed = {c.check for c in run(generate_assistant(300, seed=7, faulty=True)).failed}
    assert {"response_not_null", "response_json_object", "pii_email_in_response", "response_conflict"} <= failed
