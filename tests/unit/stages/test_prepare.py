import json

import pandas as pd
import pytest

from pipelines.core.config import DataParams, PrepareParams, ValidateParams
from pipelines.core.dataio import normalise_text
from pipelines.core.errors import CheckFailed
from pipelines.devtools.sample_data import write_sample
from pipelines.stages.prepare import prepare
from pipelines.stages.validate import validate


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_both(raw, data=DataParams(), prep=PrepareParams(), rules=ValidateParams()):
    validate(raw, data, rules)
    return prepare(raw, data, prep, rules)


def test_normalise_text():
    s = pd.Series(["  ﬁne\u00a0\u00a0day\t\n", "ＡＢＣ  x", None])
    out = normalise_text(s, "NFKC", lowercase=False)
    assert out.tolist()[:2] == ["fine day", "ABC x"] and pd.isna(out.iat[2])
    assert normalise_text(s, "NFKC", lowercase=True).iat[1] == "abc x"


def test_prepare_outputs_split_card_and_redaction(workdir):
    rows = [(f"Help with   {lab} case {i}", lab) for lab in ("alpha", "beta", "gamma") for i in range(30)]
    rows += [("Help with alpha case 0", "alpha"),            # exact duplicate after whitespace normalisation
             ("mail me at jo@example.com about alpha", "alpha")]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(workdir / "d.csv", index=False)
    card = run_both("d.csv")
    out = workdir / "data" / "prepared"
    splits = {s: pd.read_parquet(out / f"{s}.parquet") for s in ("train", "validation", "test")}
    assert {s: len(f) for s, f in splits.items()} == {"train": 73, "validation": 9, "test": 9}
    for f in splits.values():  # stratified: every label in every split
        assert sorted(f["label"].unique()) == ["alpha", "beta", "gamma"]
        assert list(f.columns) == ["text", "label", "_source", "_row", "label_id"]
    keys = [tuple(k) for f in splits.values() for k in f[["_source", "_row"]].values]
    assert len(keys) == len(set(keys)) == 91
    everything = pd.concat(splits.values())
    assert "mail me at [EMAIL] about alpha" in everything["text"].tolist()
    assert not everything["text"].str.contains("  ").any()
    assert json.loads((out / "label_map.json").read_text()) == {"alpha": 0, "beta": 1, "gamma": 2}
    assert card["dropped"] == {"exact_duplicates": 1}
    assert card["pii_redactions"] == {"email": 1}
    assert card["source"]["files"]["d.csv"]["sha256"]
    assert card["splits"]["train"]["labels"] == {"alpha": 25, "beta": 24, "gamma": 24}
    assert (out / "data_card.md").read_text().startswith("# Data card")


def test_same_seed_same_bytes_other_seed_other_split(workdir):
    write_sample(workdir / "raw", rows=400, seed=3)
    run_both("raw")
    first = (workdir / "data/prepared/test.parquet").read_bytes()
    run_both("raw")
    assert (workdir / "data/prepared/test.parquet").read_bytes() == first
    run_both("raw", prep=PrepareParams(seed=7))
    assert (workdir / "data/prepared/test.parquet").read_bytes() != first


def test_quarantined_rows_are_excluded(workdir):
    rows = [(f"text {i} for {lab}", lab) for lab in ("a", "b") for i in range(100)] + [("   ", "a")]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(workdir / "d.csv", index=False)
    card = run_both("d.csv")
    assert card["dropped"] == {"quarantined": 1}
    assert card["rows"] == 200


@pytest.mark.parametrize("setup, message", [
    ("no_result", "run `pipelines validate` first"),
    ("failed", "validation failed for this data"),
    ("stale", "is stale"),
    ("other_params", "other `data` params"),
])
def test_prepare_refuses_unvalidated_data_and_keeps_old_output(workdir, setup, message):
    write_sample(workdir / "raw", rows=300, seed=1)
    if setup != "no_result":
        run_both("raw")
    before = (workdir / "data/prepared/train.parquet").read_bytes() if setup != "no_result" else None
    if setup == "failed":
        write_sample(workdir / "raw", rows=300, seed=2, faulty=True)
        with pytest.raises(CheckFailed):
            validate("raw", DataParams(), ValidateParams())
    elif setup == "stale":
        write_sample(workdir / "raw", rows=50, seed=9)
    with pytest.raises(CheckFailed, match=message):
        data = DataParams(text_column="body") if setup == "other_params" else DataParams()
        prepare("raw", data, PrepareParams(), ValidateParams())
    if before is not None:
        assert (workdir / "data/prepared/train.parquet").read_bytes() == before


def test_rare_labels_stay_in_train_and_are_recorded(workdir):
    rows = [(f"text {i}", "big") for i in range(40)] + [("only one of these", "tiny")]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(workdir / "d.csv", index=False)
    card = run_both("d.csv", rules=ValidateParams(min_examples_per_label=1, max_imbalance_ratio=None))
    assert card["labels_too_rare_to_split"] == ["tiny"]
    assert card["splits"]["train"]["labels"]["tiny"] == 1


def test_causal_lm_prompt_response(workdir):
    rows = [{"question": f"What is {i} + {i}?", "answer": f"It is {2 * i}."} for i in range(50)]
    pd.DataFrame(rows).to_json(workdir / "d.jsonl", orient="records", lines=True)
    data = DataParams(task="causal_lm", prompt_column="question", response_column="answer")
    card = run_both("d.jsonl", data=data)
    train = pd.read_parquet(workdir / "data/prepared/train.parquet")
    assert list(train.columns) == ["prompt", "response", "_source", "_row"]
    assert card["rows"] == 50 and card["num_labels"] is None
    assert not (workdir / "data/prepared/label_map.json").exists()


@pytest.mark.parametrize("chat", [False, True])
def test_canaries_are_planted_in_train_only_and_recorded(workdir, chat):
    if chat:
        rows = [{"messages": json.dumps([{"role": "user", "content": f"What is {i} + {i}?"},
                                         {"role": "assistant", "content": f"It is {2 * i}."}])} for i in range(50)]
    else:
        rows = [{"prompt": f"What is {i} + {i}?", "response": f"It is {2 * i}."} for i in range(50)]
    pd.DataFrame(rows).to_json(workdir / "d.jsonl", orient="records", lines=True)
    data = DataParams(task="causal_lm")
    card = run_both("d.jsonl", data=data, prep=PrepareParams(canaries=3, canary_repeats=2))
    out = workdir / "data/prepared"
    planted = json.loads((out / "canaries.json").read_text())
    assert len(planted) == 3 and len({c["secret"] for c in planted}) == 3
    splits = {s: pd.read_parquet(out / f"{s}.parquet") for s in ("train", "validation", "test")}
    text = {s: " ".join(f.drop(columns=["_source", "_row"]).astype(str).agg(" ".join, axis=1)) for s, f in splits.items()}
    for c in planted:
        assert text["train"].count(c["secret"]) == 2  # canary_repeats copies, in the split's own columns
        assert c["secret"] not in text["validation"] + text["test"]
    assert (splits["train"]["_source"] == "canary").sum() == 6
    assert card["canaries_planted"] == {"canaries": 3, "train_rows": 6} and card["splits"]["train"]["rows"] == 40
    first = (out / "canaries.json").read_bytes()
    run_both("d.jsonl", data=data, prep=PrepareParams(canaries=3, canary_repeats=2))
    assert (out / "canaries.json").read_bytes() == first  # same data, same canaries (DVC can skip prepare)
    run_both("d.jsonl", data=data)
    assert not (out / "canaries.json").exists()  # none asked for: none planted, none recorded
