import pandas as pd
import pytest

from pipelines.core import pii

# (text, kind, expected): real formats that must be caught, and look-alikes that must not.
CASES = [
    ("write to jane.doe+bank@mail.example.co.uk please", "email", True),
    ("my handle is @jane on twitter", "email", False),
    ("call me on +44 7700 900123", "phone", True),
    ("my number is (415) 555-2671", "phone", True),
    ("ring 07700900123 after six", "phone", True),
    ("I paid 1500 on 2024-01-15", "phone", False),
    ("order 123456 arrived", "phone", False),
    ("card 4539 1488 0343 6467 was charged", "card", True),
    ("card 4539-1488-0343-6467 was charged", "card", True),
    ("card 4539148803436467", "card", True),
    ("card 4539 1488 0343 6468 (bad checksum)", "card", False),
    ("tracking 1234 5678 9012", "card", False),
    ("IBAN GB82 WEST 1234 5698 7654 32", "iban", True),
    ("iban DE89370400440532013000 please", "iban", True),
    ("IBAN GB82 WEST 1234 5698 7654 33 (bad checksum)", "iban", False),
    ("GB82 is my postcode prefix", "iban", False),
]


@pytest.mark.parametrize("text, kind, expected", CASES)
def test_detectors(text, kind, expected):
    assert pii.contains(text, kind) is expected
    mask = pii.detect(pd.Series([text, None, "nothing here"]), kind)
    assert mask.tolist() == [expected, False, False]


@pytest.mark.parametrize("digits, ok", [("4539148803436467", True), ("79927398713", True),
                                        ("79927398710", False), ("0", True)])
def test_luhn(digits, ok):
    assert pii.luhn_ok(digits) is ok


@pytest.mark.parametrize("text", ["card 4539 1488 0343 6467", "IBAN GB82 WEST 1234 5698 7654 32"])
def test_card_and_iban_digits_are_not_also_reported_as_phones(text):
    assert not pii.contains(text, "phone")
    assert not pii.detect(pd.Series([text]), "phone").iat[0]


def test_redact_replaces_every_kind_and_counts():
    text = ("mail a.b@example.com, card 4539 1488 0343 6467, call +44 7700 900123, "
            "iban GB82 WEST 1234 5698 7654 32, order 123456")
    out, counts = pii.redact(text, tuple(pii.DETECTORS))
    assert out == "mail [EMAIL], card [CARD], call [PHONE], iban [IBAN], order 123456"
    assert counts == {"email": 1, "card": 1, "phone": 1, "iban": 1}


def test_redact_only_the_configured_kinds():
    out, counts = pii.redact("a.b@example.com +44 7700 900123", ("email",))
    assert out == "[EMAIL] +44 7700 900123" and counts == {"email": 1}
