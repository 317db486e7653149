"""`pipelines init`: a model folder from one's own data file. Columns named or inferred; bad names,
existing folders, unreadable or unsuitable data are one line, exit 2, and nothing is written."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml

from pipelines.cli import main
from pipelines.core.config import load_params
from pipelines.core.errors import InputError
from pipelines.devtools.onboarding.columns import choose
from tests.conftest import ROOT

INTENTS = ["card_arrival", "lost_card", "refund", "transfer"]


def rows(n_per_label: int = 12) -> pd.DataFrame:
    return pd.DataFrame([{"id": i * 10 + j, "utterance": f"request {j} about {label.replace('_', ' ')} number {i}",
                          "intent": label} for j, label in enumerate(INTENTS) for i in range(n_per_label)])


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A checkout's projects/ with the two models init starts from (their params and stages)."""
    for name in ("text-classifier", "support-assistant"):
        (tmp_path / "projects" / name).mkdir(parents=True)
        for f in ("params.yaml", "dvc.yaml"):
            shutil.copy(ROOT / "projects" / name / f, tmp_path / "projects" / name / f)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_init_writes_a_model_folder_whose_params_the_stages_read(checkout, capsys):
    rows().to_csv(checkout / "mine.csv", index=False)
    assert main(["init", "tickets", "--data", "mine.csv"]) == 0
    out, err = capsys.readouterr()
    assert "text column 'utterance' (inferred: its name), label column 'intent' (inferred: its name)" in err
    folder = checkout / "projects" / "tickets"
    params = load_params(folder / "params.yaml")
    assert (params.data.task, params.data.text_column, params.data.label_column) == \
        ("classification", "utterance", "intent")
    assert params.registry.model_name == "tickets" and params.evaluate.holdout == "golden/holdout.csv"
    assert "# a list to restrict labels" in (folder / "params.yaml").read_text()  # the comments users need stay
    assert (folder / "dvc.yaml").resolve() == (checkout / "projects" / "text-classifier" / "dvc.yaml").resolve()
    drop, holdout = pd.read_csv(folder / "data" / "raw" / "mine.csv"), pd.read_csv(folder / "golden" / "holdout.csv")
    assert list(holdout.columns) == ["utterance", "intent"] and len(drop) + len(holdout) == 48
    assert holdout["intent"].value_counts().to_dict() == {label: 1 for label in INTENTS}  # a share of each label
    assert not set(holdout["utterance"]) & set(drop["utterance"])  # never trained on what judges it
    assert "NOT REVIEWED" in (folder / "golden" / "REVIEW.md").read_text()
    assert "git add projects/tickets" in out and "lifecycle__tickets" in out


def test_a_generative_file_starts_from_the_assistant_and_keeps_its_answer_format(checkout):
    answers = [{"prompt": f"question {i}", "response": json.dumps({"intent": "x", "reply": f"ok {i}"})}
               for i in range(40)]
    pd.DataFrame(answers).to_json(checkout / "chat.jsonl", orient="records", lines=True)
    assert main(["init", "helper", "--data", "chat.jsonl"]) == 0
    params = load_params(checkout / "projects" / "helper" / "params.yaml")
    assert (params.data.task, params.data.response_format) == ("causal_lm", "json_object")
    assert params.evaluate.golden_prompts is None and params.gate.min_golden_pass_rate is None  # its own, by a person
    assert not (checkout / "projects" / "helper" / "golden").exists()


def test_a_chat_file_keeps_its_messages_column(checkout):
    chats = [{"messages": [{"role": "user", "content": f"where is parcel {i}?"},
                           {"role": "assistant", "content": f"Parcel {i} arrives tomorrow."}]} for i in range(40)]
    pd.DataFrame(chats).to_json(checkout / "chats.jsonl", orient="records", lines=True)
    assert main(["init", "chat", "--data", "chats.jsonl"]) == 0
    params = load_params(checkout / "projects" / "chat" / "params.yaml")
    assert (params.data.task, params.data.messages_column, params.data.response_format) == \
        ("causal_lm", "messages", "text")  # plain answers: not the assistant's JSON format


@pytest.mark.parametrize("columns, task, named, chosen", [
    (["text", "label"], None, {}, {"text": "text", "label": "label"}),
    (["Query", "Category", "note"], None, {}, {"text": "Query", "label": "Category"}),
    (["body", "kind"], None, {}, {"label": "kind", "text": "body"}),  # fewest values; then the longest text
    (["a", "b"], "classification", {"text": "b", "label": "a"}, {"text": "b", "label": "a"}),
    (["instruction", "output"], None, {}, {"prompt": "instruction", "response": "output"}),
])
def test_columns_are_named_or_inferred(columns, task, named, chosen):
    values = {"text": "a long request text {}", "Query": "a long request text {}", "body": "a long request text {}",
              "label": "L{}", "Category": "C{}", "kind": "K{}", "note": "n", "a": "A{}", "b": "B {} words",
              "instruction": "do {}", "output": "done {}"}
    frame = pd.DataFrame({c: [values[c].format(i % 3 if values[c].startswith(("L", "C", "K", "A")) else i)
                              for i in range(12)] for c in columns})
    assert choose(frame, task, named, "f.csv").chosen == chosen


def test_columns_that_cannot_be_told_apart_are_one_line_naming_the_flag():
    frame = pd.DataFrame({"x": [f"unique text {i}" for i in range(10)], "y": [f"other {i}" for i in range(10)]})
    with pytest.raises(InputError, match="no column can be the label .*--label-column"):
        choose(frame, "classification", {}, "f.csv")


def _write(checkout, name, text):
    (checkout / name).write_text(text)


BAD = [
    ("bad-name", ["init", "../evil", "--data", "mine.csv"], "invalid model name"),
    ("existing-folder", ["init", "text-classifier", "--data", "mine.csv"], "projects/text-classifier/ exists"),
    ("missing-file", ["init", "m", "--data", "nope.csv"], "input not found: nope.csv"),
    ("wrong-format", ["init", "m", "--data", "notes.txt"], "unsupported format '.txt'"),
    ("empty-file", ["init", "m", "--data", "empty.csv"], "file is empty"),
    ("a-directory", ["init", "m", "--data", "projects"], "a directory; name one file"),
    ("unknown-column", ["init", "m", "--data", "mine.csv", "--label-column", "nope"],
     "--label-column 'nope' is not a column of mine.csv (columns: id, utterance, intent)"),
    ("number-column", ["init", "m", "--data", "nums.jsonl", "--label-column", "label"], "holds values that are not text"),
    ("one-label", ["init", "m", "--data", "one.csv"], "the label column 'label' holds one label"),
    ("too-few-per-label", ["init", "m", "--data", "few.csv"], "does not meet the data contract"),
    ("unknown-like", ["init", "m", "--data", "mine.csv", "--like", "nope"], "--like nope: no model folder"),
    ("task-unlike", ["init", "m", "--data", "mine.csv", "--like", "support-assistant"],
     "no column can be the prompt (text columns: id, utterance, intent); name it with --prompt-column"),
    ("task-and-like-disagree", ["init", "m", "--data", "mine.csv", "--task", "classification", "--like",
                                "support-assistant"], "--like support-assistant: a causal_lm model, and --task says"),
    ("holdout-share", ["init", "m", "--data", "mine.csv", "--holdout-share", "0.9"], "--holdout-share must be"),
]


@pytest.mark.parametrize("argv, says", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(checkout, capsys, argv, says):
    rows().to_csv(checkout / "mine.csv", index=False)
    _write(checkout, "notes.txt", "text,label\n")
    _write(checkout, "empty.csv", "")
    pd.DataFrame({"text": [f"text {i}" for i in range(20)], "label": ["only"] * 20}).to_csv(checkout / "one.csv",
                                                                                            index=False)
    rows(2).to_csv(checkout / "few.csv", index=False)
    pd.DataFrame({"text": ["a b", "c d"], "label": [1, 2]}).to_json(checkout / "nums.jsonl", orient="records",
                                                                    lines=True)
    before = tree(checkout)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert tree(checkout) == before


def test_init_outside_a_checkout_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rows().to_csv(tmp_path / "mine.csv", index=False)
    assert main(["init", "m", "--data", "mine.csv"]) == 2
    assert "init: no projects/ folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.csv"]
