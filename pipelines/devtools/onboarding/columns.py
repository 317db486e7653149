"""Which columns of a user's data file the model reads: text and label, or prompt and response.

Inputs: the frame `dataio.read_dataset` read, the task (None: inferred from the columns) and the columns
the user named (None: inferred). A causal-LM file may instead hold a chat `messages` column (a list of
role/content turns). Outputs: `Columns`, each role with the column chosen and how it was
chosen ("named", or "inferred: <why>"), for `pipelines init` to state and the user to confirm.
A file whose columns cannot be told apart raises InputError naming the flag that settles it.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pipelines.core.errors import InputError

# Column names people give each role, in order of preference (compared lower-cased).
NAMES = {
    "text": ("text", "query", "utterance", "sentence", "message", "question", "input", "content"),
    "label": ("label", "category", "intent", "class", "target", "tag", "topic"),
    "prompt": ("prompt", "instruction", "question", "input", "query"),
    "response": ("response", "answer", "output", "completion", "reply"),
}
ROLES = {"classification": ("text", "label"), "causal_lm": ("prompt", "response")}
FLAGS = {"text": "--text-column", "label": "--label-column", "prompt": "--prompt-column",
         "response": "--response-column"}


@dataclass(frozen=True)
class Columns:
    task: str
    chosen: dict[str, str]  # role -> column
    how: dict[str, str]     # role -> "named" | "inferred: ..."

    def describe(self) -> str:
        return ", ".join(f"{role} column {col!r} ({self.how[role]})" for role, col in self.chosen.items())


def _text_columns(frame: pd.DataFrame) -> list[str]:
    """Columns whose values are text (not numbers, not lists), in file order."""
    out = []
    for col in frame.columns:
        if str(col).startswith("_"):
            continue
        values = frame[col].dropna()
        if len(values) and values.map(lambda v: isinstance(v, str)).all():
            out.append(col)
    return out


def infer_task(frame: pd.DataFrame) -> str:
    lower = {str(c).lower() for c in frame.columns}
    generative = (lower & set(NAMES["prompt"])) and (lower & set(NAMES["response"])) or "messages" in lower
    return "causal_lm" if generative and not lower & {"label", "category", "intent"} else "classification"


def _by_name(role: str, candidates: list[str]) -> str | None:
    lower = {str(c).lower(): c for c in candidates}
    return next((lower[name] for name in NAMES[role] if name in lower), None)


def choose(frame: pd.DataFrame, task: str | None, named: dict[str, str | None], source: str) -> Columns:
    """The columns of each role of the task: named ones checked, the others inferred."""
    task = task or infer_task(frame)
    if task not in ROLES:
        raise InputError(f"--task {task!r}: init knows classification and causal_lm")
    columns = [c for c in frame.columns if not str(c).startswith("_")]
    texts = _text_columns(frame)
    chat = next((c for c in columns if str(c).lower() == "messages"), None)
    if task == "causal_lm" and chat is not None and not any(named.get(r) for r in ROLES[task]):
        return Columns(task, {"messages": chat}, {"messages": "inferred: a chat `messages` column"})
    chosen, how = {}, {}
    for role in ROLES[task]:
        given = named.get(role)
        if given is None:
            continue
        if given not in columns:
            raise InputError(f"{FLAGS[role]} {given!r} is not a column of {source} (columns: {', '.join(columns)})")
        if given not in texts:
            raise InputError(f"{FLAGS[role]} {given!r}: column of {source} holds values that are not text")
        chosen[role], how[role] = given, "named"
    for role in ROLES[task]:
        if role in chosen:
            continue
        left = [c for c in texts if c not in chosen.values()]
        col, why = _by_name(role, left), "its name"
        if col is None and role == "label":
            col, why = _fewest_values(frame, left)
        elif col is None and role == "text":
            col, why = (max(left, key=lambda c: frame[c].str.len().mean()), "the longest text") if left else (None, "")
        if col is None:
            raise InputError(f"{source}: no column can be the {role} (text columns: {', '.join(texts) or 'none'}); "
                             f"name it with {FLAGS[role]}")
        chosen[role], how[role] = col, f"inferred: {why}"
    return Columns(task, chosen, how)


def _fewest_values(frame: pd.DataFrame, candidates: list[str]) -> tuple[str | None, str]:
    """A label column repeats a few values: the text column with the fewest distinct values, when they
    are at most half the rows."""
    if not candidates:
        return None, ""
    col = min(candidates, key=lambda c: frame[c].nunique())
    return (col, "the fewest distinct values") if frame[col].nunique() <= len(frame) / 2 else (None, "")
