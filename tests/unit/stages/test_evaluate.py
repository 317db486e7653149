"""Scores of the evaluate stage that need no model."""
import json

from pipelines.stages.evaluate import json_scores


def test_json_scores_table():
    ref = json.dumps({"intent": "card_arrival", "amount": None, "urgency": "high"})
    cases = [(ref, 1.0, 1.0), ('{"intent": "card_arrival", "amount": null, "urgency": "normal"}', 1.0, 2 / 3),
             ('{"intent": "card_arrival"', 0.0, 0.0), ("[1, 2]", 0.0, 0.0), ('{"other": 1}', 1.0, 0.0)]
    for answer, valid, fields in cases:
        assert json_scores(answer, ref) == {"json_valid": valid, "field_match": fields}, answer


def _params(tmp_path, holdout, **data):
    from pipelines.core.config import parse_params

    return parse_params({"data": {"task": "classification", **data},
                         "prepare": {"output_dir": str(tmp_path / "prepared")},
                         "evaluate": {"holdout": str(holdout)}})


def test_the_reviewed_holdout_is_scored_normalised_and_identified(tmp_path):
    from pipelines.core.hashing import sha256_file
    from pipelines.stages.evaluate import eval_rows

    holdout = tmp_path / "holdout.csv"
    holdout.write_text("msg,intent\n\"  my  card\u00a0is late \",card_arrival\nreset my pin, change_pin\n")
    frame, scored_on = eval_rows(_params(tmp_path, holdout, text_column="msg", label_column="intent"))
    assert frame.to_dict("records") == [{"text": "my card is late", "label": "card_arrival"},
                                        {"text": "reset my pin", "label": "change_pin"}]
    assert scored_on == {"kind": "holdout", "path": str(holdout), "sha256": sha256_file(holdout)}


def test_a_bad_holdout_is_one_clear_line(tmp_path):
    import pytest

    from pipelines.core.errors import InputError
    from pipelines.stages.evaluate import eval_rows

    cases = [("missing.csv", None, "not found"),
             ("h.csv", "label\ncard_arrival\n", "no column 'text'"),
             ("h.csv", "text,label\nmy card is late,\n", "row 1 has an empty text or label"),
             ("h.csv", "text,label\nok,a\nmail me at sam.lee@example.com,b\n", "row 2 contains PII (email)"),
             ("h.csv", "", "file is empty")]
    for name, content, message in cases:
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            eval_rows(_params(tmp_path, path))
        path.unlink(missing_ok=True)


def test_a_holdout_on_a_generative_task_is_a_config_error(tmp_path):
    import pytest

    from pipelines.core.config import parse_params
    from pipelines.core.errors import ConfigError

    with pytest.raises(ConfigError, match="evaluate.holdout is a labelled file for classifiers"):
        parse_params({"data": {"task": "causal_lm"}, "evaluate": {"holdout": "golden/holdout.csv"}})


def test_labels_reach_the_confusion_csv_without_a_formula(tmp_path):
    """CSV evidence is opened in spreadsheets: a label from the data starting with = + - @ is defused
    (OWASP's leading apostrophe), a plain number is kept as it is."""
    import pandas as pd

    from pipelines.stages.evaluate import _confusion

    labels = ["=HYPERLINK(\"http://evil\")", "+cmd|' /C calc'!A0", "@SUM(1+1)", "-1", "ok", "\tpad"]
    (tmp_path / "label_map.json").write_text(json.dumps({lab: i for i, lab in enumerate(labels)}))
    per = pd.DataFrame({"label_id": range(len(labels)), "pred": list(range(len(labels)))})
    _confusion(tmp_path, tmp_path, per)
    kept = pd.read_csv(tmp_path / "confusion.csv", dtype=str, keep_default_na=False)["actual"].tolist()
    assert kept == ["'=HYPERLINK(\"http://evil\")", "'+cmd|' /C calc'!A0", "'@SUM(1+1)", "-1", "ok", "'\tpad"]
