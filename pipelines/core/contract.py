"""The Great Expectations suite of the data contract, built from params.yaml.

Inputs: the loaded dataset frame and the `data`/`validate` params. Outputs: the frame GX
validates (contract columns as strings plus a few derived columns for cross-row rules) and the
ordered list of `Check`s, each holding one GX expectation, its level and how to explain a
failure. Levels: `row` failures can be quarantined, `dataset` failures fail the run, `info`
findings are reported only (PII under the `redact` policy).

Cross-row rules use derived columns so that GX computes the verdict, counts and row indices:
`_duplicate` (text seen on an earlier row), `_label_conflict` (text seen with another label),
`_label_count` (size of the row's class) and `_imbalance` (largest class / the row's class).
PII uses a custom GX expectation (`ExpectColumnValuesToNotContainPii`), regex plus checksum.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

from pipelines.core import pii
from pipelines.core.config import DataParams, ValidateParams
from pipelines.tasks import task_spec

LABEL_FORM = r"^\S(?:.*\S)?$"  # non-empty, no leading/trailing whitespace, one line
BLANK = r"^\s*$"
ROLES = {"system", "user", "assistant", "tool"}


@dataclass(frozen=True)
class Check:
    name: str
    expectation: Any
    level: str
    column: str | None = None
    explain: Callable[[dict[str, Any]], str] | None = None

    def describe(self, result: dict[str, Any]) -> str:
        if self.explain is not None:
            return self.explain(result)
        count = result.get("unexpected_count") or 0
        pct = result.get("unexpected_percent") or 0.0
        return f"{count} rows ({pct:.2f}%)"


def _register_pii_expectation():
    """Define the custom PII expectation once (GX registers classes on definition)."""
    from great_expectations.execution_engine import PandasExecutionEngine
    from great_expectations.expectations.expectation import ColumnMapExpectation
    from great_expectations.expectations.metrics import ColumnMapMetricProvider, column_condition_partial

    class ColumnValuesNoPii(ColumnMapMetricProvider):
        condition_metric_name = "column_values.no_pii"
        condition_value_keys = ("pii_kind",)

        @column_condition_partial(engine=PandasExecutionEngine)
        def _pandas(cls, column, pii_kind, **kwargs):
            return ~pii.detect(column, pii_kind)

    class ExpectColumnValuesToNotContainPii(ColumnMapExpectation):
        """Expect no value to contain PII of one kind: email, phone, card (Luhn) or iban (mod-97)."""

        pii_kind: str
        map_metric = "column_values.no_pii"
        success_keys = ("mostly", "pii_kind")

    return ExpectColumnValuesToNotContainPii


_PII_EXPECTATION = None


def pii_expectation(**kwargs):
    global _PII_EXPECTATION
    if _PII_EXPECTATION is None:
        _PII_EXPECTATION = _register_pii_expectation()
    return _PII_EXPECTATION(**kwargs)


def text_columns(frame: pd.DataFrame, data: DataParams) -> dict[str, str]:
    """The free-text columns the contract checks for this task, keyed by role.

    Check names use the role (`text_not_null`), so they stay stable whatever the columns are called.
    """
    if task_spec(data.task).labelled:
        return {"text": data.text_column}
    if data.messages_column in frame.columns and data.prompt_column not in frame.columns:
        return {"messages": "_messages_text"}
    return {"prompt": data.prompt_column, "response": data.response_column}


def required_columns(frame: pd.DataFrame, data: DataParams) -> list[str]:
    if task_spec(data.task).labelled:
        return [data.text_column, data.label_column]
    if data.messages_column in frame.columns and data.prompt_column not in frame.columns:
        return [data.messages_column]
    return [data.prompt_column, data.response_column]


def validation_frame(frame: pd.DataFrame, data: DataParams) -> pd.DataFrame:
    """The columns GX validates: contract columns as strings plus derived cross-row columns."""
    out = pd.DataFrame(index=frame.index)
    for col in required_columns(frame, data):
        if col in frame.columns:
            out[col] = frame[col] if col == data.messages_column else frame[col].astype("string")
    if task_spec(data.task).generative and "messages" in text_columns(frame, data):
        parsed = frame[data.messages_column].map(parse_messages)
        out["_messages_ok"] = parsed.map(_messages_ok)
        out["_messages_text"] = parsed.map(
            lambda m: "\n".join(str(t.get("content", "")) for t in m if isinstance(t, dict)) if m else None
        ).astype("string")
    keys = [c for c in text_columns(frame, data).values() if c in out.columns]
    if keys:
        key = out[keys[0]] if len(keys) == 1 else out[keys].astype("string").fillna("\x00").agg("\x1f".join, axis=1)
        out["_duplicate"] = key.duplicated(keep="first") & key.notna()
    if task_spec(data.task).generative and {data.prompt_column, data.response_column} <= set(out.columns):
        prompt, response = out[data.prompt_column], out[data.response_column]
        answers = response.groupby(prompt).transform("nunique")
        out["_response_conflict"] = (answers > 1).fillna(False).astype(bool)
        if data.response_format == "json_object":
            out["_response_json"] = response.map(is_json_object).astype(bool)
    if task_spec(data.task).labelled and data.label_column in frame.columns:
        # a label is a name: a number, a boolean or a list in JSONL or Parquet would silently become a class
        out["_label_text"] = frame[data.label_column].map(lambda v: isinstance(v, str) or _missing(v)).astype(bool)
    if task_spec(data.task).labelled and {data.text_column, data.label_column} <= set(out.columns):
        # Class statistics use the label as prepare will write it (stripped): a stray space is
        # reported by label_well_formed, not as a fake extra class.
        label, text = out[data.label_column].str.strip(), out[data.text_column]
        counts = label.map(label.value_counts())
        out["_label_count"] = counts.astype("Float64")
        out["_imbalance"] = (counts.max() / counts).astype("Float64")
        n_labels = label.groupby(text).transform("nunique")
        out["_label_conflict"] = (n_labels > 1).fillna(False).astype(bool)
    return out


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or a dict: not missing, not text
        return False


def parse_messages(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return None
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def is_json_object(text: Any) -> bool:
    """Whether a response is exactly one JSON object (what `data.response_format: json_object` promises)."""
    if not isinstance(text, str):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _messages_ok(messages: Any) -> bool:
    if not isinstance(messages, list) or not messages:
        return False
    roles = []
    for turn in messages:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES:
            return False
        if not isinstance(turn.get("content"), str) or not turn["content"].strip():
            return False
        roles.append(turn["role"])
    return "user" in roles and "assistant" in roles


def build_checks(frame: pd.DataFrame, vframe: pd.DataFrame, data: DataParams,
                 rules: ValidateParams) -> list[Check]:
    """The ordered checks of the contract; only columns that exist get column checks."""
    import great_expectations.expectations as gxe

    required = required_columns(frame, data)
    checks = [Check("required_columns", gxe.ExpectTableColumnsToMatchSet(
        column_set=required, exact_match=False), "dataset",
        explain=lambda r, req=required: f"missing column(s): {', '.join(c for c in req if c not in frame.columns)}; "
                                        f"found {[c for c in frame.columns if not c.startswith('_')]}")]
    if task_spec(data.task).generative and "_messages_ok" in vframe.columns:
        checks.append(Check("messages_well_formed", gxe.ExpectColumnValuesToBeInSet(
            column="_messages_ok", value_set=[True]), "row", data.messages_column))
    for role, col in text_columns(frame, data).items():
        if col in vframe.columns:
            checks += _text_checks(role, col, data, rules)
    if task_spec(data.task).labelled and data.label_column in vframe.columns:
        checks += _label_checks(vframe, data, rules)
    if "_response_conflict" in vframe.columns:
        checks.append(Check("response_conflict", gxe.ExpectColumnValuesToBeInSet(
            column="_response_conflict", value_set=[False]), "row", data.response_column,
            explain=lambda r: f"{r.get('unexpected_count')} rows share their prompt with a row of another answer"))
    if "_response_json" in vframe.columns:
        checks.append(Check("response_json_object", gxe.ExpectColumnValuesToBeInSet(
            column="_response_json", value_set=[True]), "row", data.response_column,
            explain=lambda r: f"{r.get('unexpected_count')} answers are not one JSON object "
                              "(data.response_format: json_object)"))
    if "_duplicate" in vframe.columns:
        checks.append(Check("duplicate_rate", gxe.ExpectColumnValuesToBeInSet(
            column="_duplicate", value_set=[False], mostly=1.0 - rules.max_duplicate_rate), "dataset",
            explain=lambda r: f"{r.get('unexpected_count')} duplicate rows "
                              f"({r.get('unexpected_percent', 0):.2f}%) exceed the ceiling of "
                              f"{rules.max_duplicate_rate:.2%}"))
    return checks


def _text_checks(role: str, col: str, data: DataParams, rules: ValidateParams) -> list[Check]:
    import great_expectations.expectations as gxe

    bounds = rules.text_length
    checks = [
        Check(f"{role}_not_null", gxe.ExpectColumnValuesToNotBeNull(column=col), "row", col),
        Check(f"{role}_not_blank", gxe.ExpectColumnValuesToNotMatchRegex(column=col, regex=BLANK), "row", col),
        Check(f"{role}_length", gxe.ExpectColumnValueLengthsToBeBetween(
            column=col, min_value=bounds.min, max_value=bounds.max), "row", col,
            explain=lambda r: f"{r.get('unexpected_count')} rows outside {bounds.min}..{bounds.max} characters"),
    ]
    fail = data.pii_policy == "fail" or role == "response"  # a model must never learn to answer with PII
    for kind in data.pii_detectors:
        checks.append(Check(
            f"pii_{kind}_in_{role}", pii_expectation(column=col, pii_kind=kind, mostly=1.0 if fail else 0.0),
            "row" if fail else "info", col,
            explain=(lambda r, k=kind, c=role: f"{r.get('unexpected_count')} rows contain {k} PII"
                     + (" in the answer (never redacted: an answer must not teach PII)" if c == "response" else ""))
            if fail else (lambda r, k=kind: f"{r.get('unexpected_count')} rows contain {k} PII; "
                                             "prepare will redact them (pii_policy: redact)"),
        ))
    return checks


def _label_checks(vframe: pd.DataFrame, data: DataParams, rules: ValidateParams) -> list[Check]:
    import great_expectations.expectations as gxe

    col = data.label_column
    counts = vframe[col].str.strip().value_counts()
    checks = [
        Check("label_not_null", gxe.ExpectColumnValuesToNotBeNull(column=col), "row", col),
        Check("label_is_text", gxe.ExpectColumnValuesToBeInSet(column="_label_text", value_set=[True]), "row", col,
              explain=lambda r: f"{r.get('unexpected_count')} labels are not text (a number, a boolean or a list "
                                "in JSONL or Parquet); write each label as a string"),
        Check("label_well_formed", gxe.ExpectColumnValuesToMatchRegex(column=col, regex=LABEL_FORM), "row", col,
              explain=lambda r: f"{r.get('unexpected_count')} labels empty or with stray whitespace, such as "
                                f"{[str(v) for v in (r.get('partial_unexpected_list') or [])[:3]]}"),
    ]
    if rules.allowed_labels is not None:
        allowed = list(rules.allowed_labels)
        checks.append(Check("label_in_allowed_set", gxe.ExpectColumnValuesToBeInSet(column=col, value_set=allowed),
                            "row", col, explain=lambda r: f"{r.get('unexpected_count')} rows with labels outside "
                            f"the allowed set, such as {sorted({str(v) for v in r.get('partial_unexpected_list') or []})}"))
    checks.append(Check("label_conflict", gxe.ExpectColumnValuesToBeInSet(
        column="_label_conflict", value_set=[False]), "row", col,
        explain=lambda r: f"{r.get('unexpected_count')} rows share their text with a row of another label"))
    rare = counts[counts < rules.min_examples_per_label]
    checks.append(Check("min_examples_per_label", gxe.ExpectColumnMinToBeBetween(
        column="_label_count", min_value=rules.min_examples_per_label), "dataset", col,
        explain=lambda r: f"{len(rare)} label(s) below {rules.min_examples_per_label} examples: "
                          + ", ".join(f"{k!r} ({v})" for k, v in rare.head(10).items())))
    if rules.max_imbalance_ratio is not None:
        ratio = rules.max_imbalance_ratio
        checks.append(Check("max_imbalance_ratio", gxe.ExpectColumnMaxToBeBetween(
            column="_imbalance", max_value=ratio), "dataset", col,
            explain=lambda r: f"largest/smallest class = {r.get('observed_value')} > {ratio:g} "
                              f"({counts.idxmax()}: {counts.max()}, {counts.idxmin()}: {counts.min()})"))
    return checks
