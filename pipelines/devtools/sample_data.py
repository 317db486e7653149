"""Deterministic generators of realistic customer-support datasets (the embedded default data).

Inputs: a row count, a seed, a domain and whether to plant contract violations. Outputs: a DataFrame
and `write_sample`, which writes it as one weekly drop file (CSV, JSONL or Parquet).
- `banking`, `it_helpdesk`: columns `text,label` for the classifiers, realistically hard: skewed class
  sizes, varied lengths, typos, a few planted PII strings, messages that fit two neighbouring intents
  (`CONFUSABLE`: the same words, a label either way) and a few percent of plain labelling errors, so
  a good model lands near 90% rather than at 100%. `mislabelled` makes the drop a labelling accident
  that passes every row check: a burst of one intent's messages tagged as its neighbour (`BURSTS`);
- `support_assistant`: columns `prompt,response` for a generative model: the customer's message, and
  the answer the house wants: one JSON object with the intent, the entities the message names (amount,
  currency, order reference), the urgency and a one-sentence reply in the house style. PII is planted
  in a few prompts (never in responses: prepare redacts prompts under the policy).
The same arguments always give byte-identical files; nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.dataio import atomic_write_bytes

INTENTS: dict[str, list[str]] = {
    "card_arrival": ["I ordered a new card {time} ago and it still has not arrived",
                     "When will my new card arrive?", "my card hasnt come yet, its been {time}",
                     "Is there a way to track the delivery of my card?"],
    "card_lost_or_stolen": ["I think my card was stolen {when}, please block it",
                            "I lost my card {when}, what should I do?", "someone took my wallet with my card in it",
                            "How do I freeze my card? I can't find it anywhere"],
    "cash_withdrawal_charge": ["Why was I charged {amount} for taking out cash?",
                               "there is a fee on my ATM withdrawal {when}",
                               "Do you charge for withdrawing cash abroad?"],
    "transfer_not_received": ["I sent {amount} to my friend {when} but they did not get it",
                              "My transfer of {amount} has not arrived yet",
                              "the bank transfer still shows pending after {time}"],
    "refund_request": ["I would like a refund for order {order}", "How long does a refund of {amount} take?",
                       "the merchant promised a refund {when} but I have nothing yet"],
    "exchange_rate": ["What exchange rate do you use for {currency}?",
                      "why was the rate for {currency} so bad {when}?", "How much is {amount} in {currency} today?"],
    "top_up_failed": ["My top up of {amount} failed", "I tried to top up {when} and it was declined",
                      "top-up keeps failing with my {bank} card"],
    "change_pin": ["How do I change my PIN?", "I want a new pin for my card",
                   "can I reset my PIN in the app or at an ATM?"],
    "account_closure": ["Please close my account", "How can I delete my account and get my {amount} back?",
                        "I no longer want to use this service, close everything"],
    "direct_debit": ["There is a direct debit of {amount} I don't recognise",
                     "How do I cancel a direct debit to {merchant}?", "my direct debit to {merchant} failed {when}"],
    "verify_identity": ["Why do I need to verify my identity?", "the identity check keeps rejecting my passport",
                        "What documents do you accept for verification?"],
    "declined_payment": ["My payment at {merchant} was declined {when}",
                         "why does my card keep getting declined online?",
                         "card declined for {amount} even though I have money"],
    "wrong_amount_charged": ["{merchant} charged me {amount} instead of the right price",
                             "I was charged twice for the same purchase at {merchant}",
                             "The amount on my statement is wrong"],
    "contactless_not_working": ["Contactless is not working at {merchant}", "tap to pay stopped working {when}",
                                "Why can't I pay contactless?"],
    "apple_pay": ["How do I add my card to Apple Pay?", "apple pay is not working {when}",
                  "Can I use Google Pay or Apple Pay with this card?"],
}
WEIGHTS = np.array([14, 9, 6, 12, 8, 5, 7, 4, 3, 6, 5, 9, 6, 4, 5], dtype=float)

# A second platform model's data: an internal IT help desk router (other intents, same generator).
IT_INTENTS: dict[str, list[str]] = {
    "password_reset": ["I forgot my password {when}", "please reset my password, I am locked out",
                       "my password expired and I cannot log in on {device}"],
    "vpn_issue": ["the VPN keeps disconnecting {when}", "I cannot connect to the VPN from {city}",
                  "VPN says authentication failed on {device}"],
    "laptop_hardware": ["my laptop screen is flickering", "the keyboard on my laptop stopped working {when}",
                        "my laptop will not turn on since {when}"],
    "software_install": ["can you install {merchant} on my machine?", "I need a licence for {merchant}",
                         "how do I get {merchant} installed on {device}?"],
    "email_problem": ["my mailbox is full and I cannot send email", "Outlook is not syncing {when}",
                      "emails to {bank} are bouncing back"],
    "access_request": ["I need access to the {city} shared drive", "please grant me access to the finance folder",
                       "my new colleague needs an account by {day} {month}"],
    "printer_issue": ["the printer on floor {years} is jammed", "I cannot print from {device}",
                      "the printer in the {city} office says offline"],
    "phishing_report": ["I got a suspicious email {when} asking for my password",
                        "I think I clicked a phishing link {when}", "someone pretending to be {bank} emailed me"],
}
IT_WEIGHTS = np.array([12, 9, 5, 8, 7, 6, 4, 3], dtype=float)
DOMAINS = {"banking": (INTENTS, WEIGHTS), "it_helpdesk": (IT_INTENTS, IT_WEIGHTS)}

# Messages a reader could file under either of two intents: (template, (likelier, other), P(likelier)).
CONFUSABLE: dict[str, list[tuple[str, tuple[str, str], float]]] = {
    "banking": [
        ("I still have not got my card and I am worried someone took it", ("card_arrival", "card_lost_or_stolen"), .6),
        ("my card payment at {merchant} did not go through {when}", ("declined_payment", "contactless_not_working"), .6),
        ("the {amount} I sent {when} is not showing up", ("transfer_not_received", "top_up_failed"), .6),
        ("there is a charge of {amount} on my account I do not understand",
         ("wrong_amount_charged", "direct_debit"), .55),
        ("I paid {amount} in {currency} and was charged more than I expected",
         ("exchange_rate", "wrong_amount_charged"), .55),
        ("paying with my phone does not work at {merchant}", ("apple_pay", "contactless_not_working"), .6),
        ("I want my {amount} back from {merchant}", ("refund_request", "wrong_amount_charged"), .6),
        ("you charged me {amount} at the cash machine {when}", ("cash_withdrawal_charge", "wrong_amount_charged"), .6),
        ("the app wants my passport before I can close my account", ("verify_identity", "account_closure"), .55),
        ("my card stopped working {when}", ("declined_payment", "card_lost_or_stolen"), .55),
    ],
    "it_helpdesk": [
        ("I cannot log in to the VPN, it says my password is wrong", ("vpn_issue", "password_reset"), .6),
        ("I cannot open the shared drive from {city}", ("access_request", "vpn_issue"), .55),
        ("Outlook will not install on {device}", ("software_install", "email_problem"), .55),
        ("my laptop will not print anything", ("printer_issue", "laptop_hardware"), .6),
        ("I got an email {when} telling me to reset my password", ("phishing_report", "password_reset"), .6),
        ("my laptop freezes every time I open {merchant}", ("laptop_hardware", "software_install"), .55),
    ],
}
CONFUSABLE_SHARE = 0.12  # of rows drawn from CONFUSABLE (intents then follow their templates' mix)
LABEL_NOISE = 0.03       # of rows whose label is another intent at random: honest annotators err
# A labelling accident for `mislabelled` drops: (intent, tagged as, share of the drop's rows). A week in
# which one intent surges (a postal strike: late cards) and a new labelling vendor files it under its
# neighbour. Every row is well formed, so validation's row checks pass; only a model trained on it and
# scored on reviewed labels (the model folder's golden/holdout.csv) shows the damage.
BURSTS = {"banking": ("card_arrival", "card_lost_or_stolen", 0.75),
          "it_helpdesk": ("vpn_issue", "password_reset", 0.75)}
GENERATIVE_DOMAINS = ("support_assistant",)

# The house style of the support assistant: one sentence per intent (a real team would write these).
REPLIES = {
    "card_arrival": "Sorry your card is late; I have asked our card team to check its delivery today.",
    "card_lost_or_stolen": "I have frozen your card to keep your money safe; you can order a new one in the app.",
    "cash_withdrawal_charge": "I am sorry about the cash fee; I will check whether it was applied correctly.",
    "transfer_not_received": "I am checking your transfer now and will tell you where it is within a day.",
    "refund_request": "I have opened a refund request and you will hear from us within five working days.",
    "exchange_rate": "We use the market rate at the time of payment plus the fee shown in the app.",
    "top_up_failed": "Sorry your top-up failed; please check the card details and try again in the app.",
    "change_pin": "You can change your PIN at any cash machine or in the app under card settings.",
    "account_closure": "I can close your account once your balance is paid out to you.",
    "direct_debit": "I will look into this direct debit and you can cancel it in the app at any time.",
    "verify_identity": "We verify identity to keep your account safe; a passport or a driving licence works.",
    "declined_payment": "Sorry your payment was declined; I am checking the reason with our card team now.",
    "wrong_amount_charged": "I am sorry you were charged the wrong amount; I have opened a dispute for you.",
    "contactless_not_working": "Please make one payment with your PIN and contactless will start working again.",
    "apple_pay": "You can add your card to Apple Pay or Google Pay from the card settings in the app.",
}
URGENT_OPENERS = ("Urgent: ", "Help! ")
URGENT_CLOSERS = (" I need this sorted today.",)

OPENERS = ["", "", "", "Hi, ", "Hello, ", "Hey there. ", "Good morning, ", "Hi team, ", "Quick question: ",
           "Sorry to bother you, ", "Urgent: ", "Help! "]
CLOSERS = ["", "", "", " Thanks.", " Thank you!", " Please help.", " Any idea?", " This is really annoying.",
           " I need this sorted today.", " Cheers", " Can you check?", " Please advise."]
DETAILS = ["", " (order {order})", " My reference is {order}.", " I am using the app on {device}.",
           " This happened while I was in {city}.", " I have been a customer for {years} years.",
           " It is the account ending {last4}.", " It happened at {clock}.", " Ticket {order} is still open.",
           " I already called about this on {day} {month}."]
SLOTS = {
    "time": ["two weeks", "10 days", "a month", "3 weeks", "five days", "over a week", "six weeks"],
    "when": ["yesterday", "this morning", "last night", "on Monday", "two days ago", "last week", "today"],
    "currency": ["EUR", "USD", "JPY", "CHF", "PLN", "euros", "dollars"],
    "bank": ["Barclays", "HSBC", "Lloyds", "Santander", "Monzo", "Revolut"],
    "merchant": ["Amazon", "Tesco", "Uber", "Netflix", "Spotify", "eBay", "Starbucks", "IKEA", "Zara"],
    "device": ["iPhone", "Android", "an iPad", "a Pixel", "a Samsung"],
    "city": ["Madrid", "Paris", "Berlin", "Lisbon", "Rome", "New York", "Dublin", "Warsaw"],
    "month": ["January", "March", "May", "July", "September", "November"],
}
PII_TEMPLATES = [" You can email me at {first}.{last}@example.com.", " Call me back on +44 7700 900{n3}.",
                 " My card number is {card}.", " Please send it to IBAN GB82 WEST 1234 5698 7654 32."]


def _luhn_card(rng: np.random.Generator) -> str:
    digits = [4] + list(rng.integers(0, 10, 14))
    total = 0
    for i, d in enumerate(reversed(digits)):
        d = int(d)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    digits.append((10 - total % 10) % 10)
    s = "".join(map(str, digits))
    return " ".join(s[i:i + 4] for i in range(0, 16, 4))


def _typo(text: str, rng: np.random.Generator) -> str:
    words = text.split(" ")
    i = int(rng.integers(0, len(words)))
    w = words[i]
    if len(w) > 3:
        j = int(rng.integers(0, len(w) - 1))
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:] if rng.random() < 0.7 else w[:j] + w[j + 1:]
    return " ".join(words)


# Slots filled with random numbers, in a fixed order (the order of RNG draws fixes the output).
NUMERIC_SLOTS = {
    "amount": lambda rng: f"£{int(rng.integers(1, 2500))}.{int(rng.integers(0, 100)):02d}",
    "order": lambda rng: f"#{int(rng.integers(100000, 999999))}",
    "years": lambda rng: str(int(rng.integers(1, 15))),
    "last4": lambda rng: f"{int(rng.integers(0, 10000)):04d}",
    "clock": lambda rng: f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}",
    "day": lambda rng: str(int(rng.integers(1, 29))),
}


def _fill(template: str, rng: np.random.Generator, seen: dict[str, str] | None = None) -> str:
    """Fill a template's slots; `seen` (if given) remembers the entity values used (amount, currency, order)."""
    values = {k: v[int(rng.integers(0, len(v)))] for k, v in SLOTS.items() if "{" + k + "}" in template}
    values.update({k: make(rng) for k, make in NUMERIC_SLOTS.items() if "{" + k + "}" in template})
    if seen is not None:
        for key in ("amount", "currency", "order"):
            if key in values:
                seen.setdefault(key, values[key])
    return template.format(**values)


def generate(rows: int, seed: int = 0, faulty: bool = False, domain: str = "banking",
             mislabelled: bool = False, label_noise: float = LABEL_NOISE) -> pd.DataFrame:
    """Generate `rows` labelled support requests of a domain (`DOMAINS`); `faulty` plants contract
    violations, `mislabelled` the domain's labelling accident (`BURSTS`); `label_noise` is the share
    of honest labelling errors (0 for a reviewed set)."""
    rng = np.random.default_rng(seed)
    intents, weights = DOMAINS[domain]
    labels = list(intents)
    picks = rng.choice(len(labels), size=rows, p=weights / weights.sum())
    burst = BURSTS[domain] if mislabelled else None
    if burst is not None:  # the surge: most of the drop is one intent
        surge = rng.random(rows) < burst[2]
        picks[surge] = labels.index(burst[0])
    texts, tags = [], []
    for k in picks:
        body, label = _body(labels[k], intents, domain, rng)
        text = (OPENERS[int(rng.integers(0, len(OPENERS)))] + body
                + _fill(DETAILS[int(rng.integers(0, len(DETAILS)))], rng)
                + CLOSERS[int(rng.integers(0, len(CLOSERS)))])
        r = rng.random()
        if r < 0.15:
            text = _typo(text, rng)
        elif r < 0.35:
            text = text.lower()
        if rng.random() < 0.01:
            text += PII_TEMPLATES[int(rng.integers(0, len(PII_TEMPLATES)))].format(
                first="alex", last=f"morgan{int(rng.integers(1, 99))}", n3=f"{int(rng.integers(0, 1000)):03d}",
                card=_luhn_card(rng))
        other = labels[int(rng.integers(0, len(labels)))]  # drawn every row: the noise never moves the texts
        if rng.random() < label_noise:
            label = other
        if burst is not None and label == burst[0]:
            label = burst[1]
        texts.append(text)
        tags.append(label)
    frame = pd.DataFrame({"text": texts, "label": tags})
    return _plant_faults(frame, rng, labels[:2]) if faulty else frame


def _body(intent: str, intents: dict[str, list[str]], domain: str, rng: np.random.Generator) -> tuple[str, str]:
    """The message's core and its label: the intent's own wording, or (CONFUSABLE_SHARE of the time,
    when the intent has one) a message that reads as this intent or its neighbour."""
    ambiguous = [c for c in CONFUSABLE.get(domain, []) if intent in c[1]]
    if ambiguous and rng.random() < CONFUSABLE_SHARE:
        template, pair, likelier = ambiguous[int(rng.integers(0, len(ambiguous)))]
        return _fill(template, rng), pair[0] if rng.random() < likelier else pair[1]
    templates = intents[intent]
    return _fill(templates[int(rng.integers(0, len(templates)))], rng), intent


def assistant_answer(intent: str, seen: dict[str, str], urgent: bool) -> str:
    """The response the house wants, as one compact JSON object (keys in a fixed order)."""
    import json

    return json.dumps({"intent": intent, "amount": seen.get("amount"), "currency": seen.get("currency"),
                       "reference": seen.get("order"), "urgency": "high" if urgent else "normal",
                       "reply": REPLIES[intent]}, ensure_ascii=False)


def generate_assistant(rows: int, seed: int = 0, faulty: bool = False) -> pd.DataFrame:
    """`rows` customer messages with the JSON answer a support assistant should give."""
    rng = np.random.default_rng(seed)
    labels = list(INTENTS)
    picks = rng.choice(len(labels), size=rows, p=WEIGHTS / WEIGHTS.sum())
    prompts, responses = [], []
    for k in picks:
        seen: dict[str, str] = {}
        templates = INTENTS[labels[k]]
        opener = OPENERS[int(rng.integers(0, len(OPENERS)))]
        closer = CLOSERS[int(rng.integers(0, len(CLOSERS)))]
        details = DETAILS[int(rng.integers(0, len(DETAILS)))]
        text = (opener + _fill(templates[int(rng.integers(0, len(templates)))], rng, seen)
                + _fill(details, rng, seen) + closer)
        if rng.random() < 0.1:
            typo = _typo(text, rng)
            text = typo if all(v in typo for v in seen.values()) else text  # a typo never changes an entity
        if rng.random() < 0.02:
            text += PII_TEMPLATES[int(rng.integers(0, len(PII_TEMPLATES)))].format(
                first="sam", last=f"lee{int(rng.integers(1, 99))}", n3=f"{int(rng.integers(0, 1000)):03d}",
                card=_luhn_card(rng))
        prompts.append(text)
        responses.append(assistant_answer(labels[k], seen, opener in URGENT_OPENERS or closer in URGENT_CLOSERS))
    frame = pd.DataFrame({"prompt": prompts, "response": responses})
    return _plant_generative_faults(frame, rng) if faulty else frame


def _plant_generative_faults(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Break about 20% of rows the ways generative drops break."""
    frame = frame.astype(object)
    n = len(frame)
    bad = rng.choice(n, size=max(8, n // 5), replace=False)
    broken = {int(i) for i in bad}
    for j, i in enumerate(bad):
        kind = j % 5
        if kind == 0:
            frame.at[i, "response"] = None                                    # no answer
        elif kind == 1:
            frame.at[i, "response"] = frame.at[i, "response"][:-7]            # JSON cut short
        elif kind == 2:
            frame.at[i, "response"] = frame.at[i, "response"].replace(
                '"reply": "', '"reply": "Write to alex.morgan7@example.com. ')  # PII in an answer
        elif kind == 3:
            frame.at[i, "response"] = "ok " * 2000                              # far too long
        else:                                                                   # same prompt, other answer
            other = next(k % n for k in range(int(i) + 1, int(i) + n) if k % n not in broken)
            frame.at[i, "prompt"] = frame.at[other, "prompt"]
    return frame


def _plant_faults(frame: pd.DataFrame, rng: np.random.Generator, swap: list[str]) -> pd.DataFrame:
    """Break about 20% of rows in the ways real drops break."""
    frame = frame.astype(object)
    n = len(frame)
    bad = rng.choice(n, size=max(8, n // 5), replace=False)
    for j, i in enumerate(bad):
        kind = j % 6
        if kind == 0:
            frame.at[i, "text"] = None
        elif kind == 1:
            frame.at[i, "text"] = "   "
        elif kind == 2:
            frame.at[i, "label"] = f"{frame.at[i, 'label']} "
        elif kind == 3:
            frame.at[i, "text"] = "please help " * 1200
        elif kind == 4:
            frame.at[i, "label"] = None
        else:  # same text as another row, different label
            other = int(bad[(j + 1) % len(bad)])
            frame.at[i, "text"] = frame.at[other, "text"]
            frame.at[i, "label"] = swap[0] if frame.at[other, "label"] != swap[0] else swap[1]
    return frame


def write_sample(out: str | Path, rows: int = 2000, seed: int = 0, faulty: bool = False, fmt: str = "csv",
                 domain: str = "banking", mislabelled: bool = False, label_noise: float | None = None) -> Path:
    """Write one drop; `out` is a directory (file named after seed) or a file path."""
    out = Path(out)
    kind = "-faulty" if faulty else "-mislabelled" if mislabelled else ""
    path = out if out.suffix else out / f"drop-{seed:04d}{kind}.{fmt}"
    if domain in GENERATIVE_DOMAINS and (mislabelled or label_noise is not None):
        from pipelines.core.errors import InputError

        raise InputError(f"--mislabelled and --label-noise are for the classifier domains, not {domain}")
    if label_noise is not None and not 0 <= label_noise <= 1:
        from pipelines.core.errors import InputError

        raise InputError(f"--label-noise must be a share between 0 and 1, got {label_noise}")
    frame = (generate_assistant(rows, seed=seed, faulty=faulty) if domain in GENERATIVE_DOMAINS
             else generate(rows, seed=seed, faulty=faulty, domain=domain, mislabelled=mislabelled,
                           label_noise=LABEL_NOISE if label_noise is None else label_noise))
    if path.suffix == ".parquet":
        import io
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        data = buf.getvalue()
    elif path.suffix == ".jsonl":
        data = frame.to_json(orient="records", lines=True, force_ascii=False).encode("utf-8")
    else:
        data = frame.to_csv(index=False, lineterminator="\n").encode("utf-8")
    if path.is_dir() or (path.exists() and path.read_bytes() != data):
        from pipelines.core.errors import OutputError

        raise OutputError(f"refusing to overwrite {path}: it exists with other content (a drop is never rewritten)")
    atomic_write_bytes(path, data)
    return path
