"""The story a person reads after a run, from a record and its evidence (no Airflow needed)."""
from pipelines.devtools import story

GATE_REJECTED = {"passed": False, "rules": [
    {"rule": "min_accuracy", "passed": True, "measured": 0.8125, "threshold": 0.7, "detail": ""},
    {"rule": "min_class_recall", "passed": False, "measured": 0.0189, "threshold": 0.3, "detail": "card_arrival"},
    {"rule": "no_regression", "passed": False, "measured": {"candidate_only_correct": 3, "champion_only_correct": 51,
                                                           "p_value": 1e-12}, "threshold": 0.05, "detail": "worse"}]}
REPORTS = {"validate": {"status": "passed_with_quarantine", "rows": 3400, "checks": [{}] * 14, "quarantined_rows": 4},
           "train": {"steps": 609, "train_examples": 2718, "duration_seconds": 201.3, "eval_loss": 0.71},
           "evaluate": {"test_rows": 400, "scored_on": {"kind": "holdout"},
                        "candidate": {"accuracy": 0.8125, "macro_f1": 0.79}, "champion_version": 2,
                        "champion": {"accuracy": 0.9, "macro_f1": 0.88}},
           "gate": GATE_REJECTED}
RECORD = {"run_id": "r3", "snapshot": {"files": ["a", "b", "c"], "md5": "0123456789abcdef"},
          "stages": {"train": {"ran": True}}, "gate": {"passed": False}, "lineage_commit": "f" * 40,
          "lineage_branch": "lineage"}


def test_a_rejected_run_reads_as_a_checklist_and_says_the_champion_keeps_serving():
    text = story.render("text-classifier", "run 3", RECORD, REPORTS, log=".airflow/demo-logs/x.log")
    lines = text.splitlines()
    assert lines[0] == "== text-classifier: run 3"
    assert "validate  passed_with_quarantine: 3400 rows, 14 checks, 4 rows quarantined" in text
    assert "400 holdout rows: accuracy 0.812, macro_f1 0.790" in text
    assert "champion v2 on the same rows: accuracy 0.900" in text
    checks = [line for line in lines if line.startswith("    [")]
    assert [c.split()[0] for c in checks] == ["[PASS]", "[FAIL]", "[FAIL]"]
    assert "min_class_recall" in checks[1] and "measured 0.0189" in checks[1] and "threshold 0.3" in checks[1]
    assert "champion_only_correct 51" in checks[2]
    assert "REJECTED" in text and "nothing: the champion keeps serving" in text and "x.log" in text
    assert len(lines) <= 16  # a screen, not a log


def test_outcomes_and_the_table():
    promoted = {**RECORD, "promotion": {"model": "m", "version": 2, "changed": True},
                "compute": {"seconds": 312.4, "usd": 0.00708, "tasks": {"train": {"hardware": "cpu-2vcpu"}}}}
    stopped = {"failed": {"task": "validate", "error": "validation failed: 4 check(s) failed"}}
    cases = [(RECORD, REPORTS, "rejected", "failed min_class_recall, no_regression"),
             (promoted, {**REPORTS, "gate": {"passed": True, "rules": []}}, "promoted v2", "every gate rule passed"),
             (stopped, {}, "stopped at validate", "validation failed: 4 check(s) failed")]
    rows = []
    for record, reports, outcome, why in cases:
        cells = story.outcome(record, reports)
        assert (cells["outcome"], cells["why"]) == (outcome, why)
        rows.append({"model": "m", "run": "r", **cells})
    table = story.table(rows).splitlines()
    assert table[0].split() == ["model", "run", "outcome", "score", "compute", "why"] and set(table[1]) <= {"-", " "}
    assert len(table) == 2 + len(cases) and "accuracy 0.812" in table[2]
    assert "$0.0071" in table[3] and "$" not in table[2]  # a run's compute cost, when the record has it
    assert "compute   312 s of workers, $0.0071 at cpu-2vcpu prices" in story.render("m", "run 2", promoted, {})


def test_the_status_line_names_the_tasks_and_training_progress():
    import io

    from pipelines.devtools.airflow_local import _Status

    lines = ["[info] [DAG TEST] starting task_id=validate map_index=-1\n", "GX noise\n",
             "[info] [DAG TEST] starting task_id=train map_index=-1\n",
             "train step 12/40 epoch 1 loss 1.2345 tok/s 900 eta 00:01:10\n"]
    plain, tty = io.StringIO(), io.StringIO()
    tty.isatty = lambda: True
    for stream in (plain, tty):
        status = _Status(stream)
        for line in lines:
            status.update(line)
        status.close()
    assert plain.getvalue() == "  tasks: validate train\n"  # a CI log: one line, no escape codes
    assert "\r\x1b[K  ... train: train step 12/40 epoch 1 loss 1.2345" in tty.getvalue()
    assert tty.getvalue().endswith("\r\x1b[K")


def test_hashes_are_shown_short():
    decision = {"rules": [{"rule": "candidate_identity", "passed": True, "measured": "ab" * 32, "threshold": "ab" * 32}]}
    assert story.checklist(decision) == [f"    [PASS] candidate_identity     measured {'ab' * 6}   threshold {'ab' * 6}"]
