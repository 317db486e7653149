"""PII detectors: e-mail, phone number, payment card (Luhn-checked) and IBAN (mod-97-checked).

Inputs: strings or pandas string Series. Outputs: boolean masks (`detect`) and redacted text
(`redact`, which replaces each finding with `[EMAIL]`, `[PHONE]`, `[CARD]` or `[IBAN]`).
A cheap vectorised regex finds candidates; only candidate rows pay for the checksum, so a
million clean rows cost one regex pass per detector.
"""
from __future__ import annotations

import re
from typing import Callable

import pandas as pd

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d[\d ().-]{6,18}\d(?![\w])")


def luhn_ok(digits: str) -> bool:
    """True when a digit string passes the Luhn checksum used by payment cards."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_ok(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def iban_ok(candidate: str) -> bool:
    """True for a well-formed IBAN whose ISO 13616 mod-97 check equals 1."""
    iban = candidate.replace(" ", "")
    if not 15 <= len(iban) <= 34 or not iban[:2].isalpha() or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    numeric = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(numeric) % 97 == 1


def _phone_ok(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    if _card_ok(match):
        return False  # a card number is reported as a card, not a phone
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", match.strip()):
        return False  # ISO date
    return 10 <= len(digits) <= 15 or (match.startswith("+") and 8 <= len(digits) <= 15)


DETECTORS: dict[str, tuple[re.Pattern[str], Callable[[str], bool] | None, str]] = {
    "email": (_EMAIL, None, "[EMAIL]"),
    "card": (_CARD, _card_ok, "[CARD]"),
    "iban": (_IBAN, iban_ok, "[IBAN]"),
    "phone": (_PHONE, _phone_ok, "[PHONE]"),
}


def contains(text: str, kind: str) -> bool:
    """True when `text` holds a confirmed finding of `kind`.

    Phone numbers are looked for only outside confirmed cards and IBANs, whose digit groups
    look like phone numbers too.
    """
    if kind == "phone":
        text, _ = redact(text, ("card", "iban"))
    pattern, check, _ = DETECTORS[kind]
    return any(check is None or check(m.group(0)) for m in pattern.finditer(text))


def detect(series: pd.Series, kind: str) -> pd.Series:
    """Boolean mask: True where the text contains PII of `kind` (nulls are False)."""
    pattern, check, _ = DETECTORS[kind]
    text = series.astype("string")
    candidates = text.str.contains(pattern, regex=True, na=False).astype(bool)
    if check is None or not candidates.any():
        return candidates
    confirmed = text[candidates].map(lambda s: contains(s, kind)).astype(bool)
    out = pd.Series(False, index=series.index)
    out[confirmed.index] = confirmed.to_numpy()
    return out


def redact(text: str, kinds: tuple[str, ...]) -> tuple[str, dict[str, int]]:
    """Replace every confirmed finding of `kinds`; return the text and counts per kind."""
    counts: dict[str, int] = {}
    for kind in ("email", "card", "iban", "phone"):  # cards before phones: digits overlap
        if kind not in kinds:
            continue
        pattern, check, token = DETECTORS[kind]

        def _sub(m: re.Match[str], check=check, token=token, kind=kind) -> str:
            if check is None or check(m.group(0)):
                counts[kind] = counts.get(kind, 0) + 1
                return token
            return m.group(0)

        text = pattern.sub(_sub, text)
    return text, counts
