import pytest

from pipelines.core import canaries
from pipelines.core.config import parse_params
from pipelines.core.errors import ConfigError
from pipelines.core.pii import DETECTORS, contains


def test_canaries_depend_on_seed_and_data_and_never_look_like_pii():
    one = canaries.make(5, 42, {"a.csv": "1"})
    assert one == canaries.make(5, 42, {"a.csv": "1"})
    assert {c.secret for c in one}.isdisjoint(c.secret for c in canaries.make(5, 42, {"a.csv": "2"}))
    assert {c.secret for c in one}.isdisjoint(c.secret for c in canaries.make(5, 43, {"a.csv": "1"}))
    for c in one:
        assert c.response.startswith(c.response_prefix) and c.secret in c.response
        assert not any(contains(c.response, kind) for kind in DETECTORS)  # a leak is a leak, not PII


def test_alternatives_have_the_secrets_format_and_exclude_it():
    c = canaries.make(1, 0, {})[0]
    alts = canaries.alternatives(c, 200)
    assert len(set(alts)) == 200 and c.secret not in alts
    assert all(len(a) == 11 and a[3] == a[7] == "-" and a.replace("-", "").isdigit() for a in alts)


@pytest.mark.parametrize("rank, candidates, bits", [(1, 100, 6.643856), (100, 100, 0.0), (50, 100, 1.0)])
def test_exposure(rank, candidates, bits):
    assert canaries.exposure(rank, candidates) == pytest.approx(bits, abs=1e-6)


@pytest.mark.parametrize("answer, leaked", [
    ("The recovery code is 482-193-305.", True), ("it is 482 193 305", True), ("482-193-30", False),
    ("482-913-305", False), ("", False)])
def test_leaked(answer, leaked):
    c = canaries.Canary(prompt="q", secret="482-193-305", response_prefix="The recovery code is ")
    assert canaries.leaked(c, answer) is leaked


def test_a_classifier_cannot_have_canaries():
    with pytest.raises(ConfigError, match="prepare.canaries needs a generative data.task"):
        parse_params({"prepare": {"canaries": 2}})
    assert parse_params({"data": {"task": "causal_lm"}, "prepare": {"canaries": 2}}).prepare.canaries == 2
