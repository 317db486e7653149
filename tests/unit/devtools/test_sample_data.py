import pandas as pd

from pipelines.core import pii
from pipelines.core.config import DataParams, ValidateParams
from pipelines.devtools.sample_data import INTENTS, generate, write_sample
from pipelines.stages.validate import run_suite


def test_deterministic_bytes(tmp_path):
    a = write_sample(tmp_path / "a", rows=500, seed=4)
    b = write_sample(tmp_path / "b", rows=500, seed=4)
    c = write_sample(tmp_path / "c", rows=500, seed=5)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert a.name == "drop-0004.csv"


def test_realistic_shape():
    frame = generate(3000, seed=0)
    assert 10 <= frame["label"].nunique() == len(INTENTS) <= 20
    lengths = frame["text"].str.len()
    assert lengths.min() < 40 and lengths.max() > 120
    planted = sum(frame["text"].map(lambda t: any(pii.contains(t, k) for k in pii.DETECTORS)))
    assert 5 <= planted <= 100
    assert frame["text"].duplicated().mean() < 0.05


def test_formats_round_trip(tmp_path):
    for fmt in ("csv", "jsonl", "parquet"):
        path = write_sample(tmp_path, rows=50, seed=1, fmt=fmt)
        assert path.suffix == f".{fmt}"
    assert len(pd.read_parquet(tmp_path / "drop-0001.parquet")) == 50


def test_clean_sample_passes_and_faulty_drop_fails_validation():
    def run(frame):
        frame = frame.copy()
        frame["_source"], frame["_row"] = "s.csv", range(1, len(frame) + 1)
        return run_suite(frame, DataParams(), ValidateParams())
    assert run(generate(1000, seed=0)).status == "passed"
    faulty = run(generate(300, seed=7, faulty=True))
    assert faulty.status == "failed"
    assert {"text_not_null", "text_not_blank", "label_well_formed", "label_conflict"} <= {c.check for c in faulty.failed}


def test_support_assistant_rows_answer_in_the_house_json():
    import json

    from pipelines.devtools.sample_data import REPLIES, generate_assistant

    frame = generate_assistant(600, seed=0)
    assert list(frame.columns) == ["prompt", "response"]
    answers = [json.loads(r) for r in frame["response"]]
    assert {a["intent"] for a in answers} == set(INTENTS) and all(a["reply"] == REPLIES[a["intent"]] for a in answers)
    for prompt, a in zip(frame["prompt"], answers):
        assert all(a[k] is None or a[k] in prompt for k in ("amount", "currency", "reference"))
    assert 0.05 < sum(a["urgency"] == "high" for a in answers) / len(answers) < 0.4
    assert sum(a["amount"] is not None for a in answers) > 100
    assert not any(pii.contains(r, k) for r in frame["response"] for k in pii.DETECTORS)
    assert 3 <= sum(any(pii.contains(p, k) for k in pii.DETECTORS) for p in frame["prompt"]) <= 40
    assert generate_assistant(600, seed=0).equals(frame) and not generate_assistant(600, seed=1).equals(frame)


def test_a_faulty_support_assistant_drop_breaks_the_generative_ways():
    import json

    from pipelines.devtools.sample_data import generate_assistant

    frame = generate_assistant(200, seed=3, faulty=True)

    def parses(r):
        try:
            json.loads(r)
            return True
        except (TypeError, ValueError):
            return False
    assert frame["response"].isna().sum() >= 5
    assert (~frame["response"].dropna().map(parses)).sum() >= 8  # cut short or far too long
    assert frame["response"].dropna().map(lambda r: pii.contains(r, "email")).sum() >= 5
    assert frame["prompt"].duplicated().sum() >= 5


def test_classifier_data_is_realistically_hard_and_a_reviewed_set_has_no_plain_errors():
    from pipelines.devtools.sample_data import CONFUSABLE, LABEL_NOISE

    for domain in ("banking", "it_helpdesk"):
        frame = generate(4000, seed=0, domain=domain)
        lowered = frame["text"].str.lower()
        for template, pair, _ in CONFUSABLE[domain]:
            literal = template.split("{")[0].lower()
            if len(literal) >= 15:  # the same wording is filed under both intents of its pair
                assert set(frame.loc[lowered.str.contains(literal, regex=False), "label"]) >= set(pair), template
        assert len(CONFUSABLE[domain]) >= 5
    clean, noisy = generate(4000, seed=0, label_noise=0.0), generate(4000, seed=0)
    assert clean["text"].equals(noisy["text"])  # the noise only touches labels
    assert 0.5 * LABEL_NOISE < (clean["label"] != noisy["label"]).mean() < 2 * LABEL_NOISE


def test_a_mislabelled_drop_is_a_surge_tagged_as_the_neighbour_and_passes_row_checks(tmp_path):
    import pytest

    from pipelines.core.errors import InputError
    from pipelines.devtools.sample_data import BURSTS

    for domain in ("banking", "it_helpdesk"):
        intent, tagged, share = BURSTS[domain]
        frame = generate(800, seed=2, domain=domain, mislabelled=True)
        assert intent not in set(frame["label"])
        assert (frame["label"] == tagged).mean() > share - 0.05
        path = write_sample(tmp_path, rows=800, seed=2, domain=domain, mislabelled=True)
        assert path.name == "drop-0002-mislabelled.csv"
        path.unlink()
        # drops accumulate: with the earlier (clean) drop, every check passes
        both = pd.concat([generate(2000, seed=0, domain=domain), frame], ignore_index=True)
        both["_source"], both["_row"] = "s.csv", range(1, len(both) + 1)
        assert run_suite(both, DataParams(), ValidateParams()).success, domain
    with pytest.raises(InputError, match="for the classifier domains"):
        write_sample(tmp_path, rows=10, domain="support_assistant", mislabelled=True)
    with pytest.raises(InputError, match="--label-noise must be a share between 0 and 1"):
        write_sample(tmp_path, rows=10, label_noise=1.5)
