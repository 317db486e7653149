"""Stage `prepare`: turn validated raw data into versioned train/validation/test Parquet splits.

Inputs: the dataset path, the `data` and `prepare` params, and the outputs of `validate`
(`result.json`, which must have passed for exactly these files and columns, and the quarantine
file, whose rows are excluded). Outputs, in `prepare.output_dir`, replaced as a whole in one
rename: `train.parquet`, `validation.parquet`, `test.parquet` (canonical columns `text`,
`label`, `label_id` or `prompt`/`response` or `messages`, plus provenance `_source`/`_row`),
`label_map.json` (classification), `canaries.json` (generative tasks with `prepare.canaries`: the
secrets planted in the train split, for evaluate's memorisation test) and `data_card.json` / `data_card.md` (rows and labels per
split, length statistics, source file hashes, what was dropped and why).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import canaries, pii
from pipelines.core.config import DataParams, PrepareParams, ValidateParams
from pipelines.core.contract import parse_messages
from pipelines.core.dataio import atomic_dir, dataset_fingerprint, normalise_text, read_dataset, write_json
from pipelines.core.errors import CheckFailed
from pipelines.tasks import task_spec

SPLITS = ("train", "validation", "test")


def prepare(path: str | Path, data: DataParams, rules: PrepareParams, vrules: ValidateParams) -> dict[str, Any]:
    """Prepare the dataset at `path`; return the data card (also written to the output dir)."""
    fingerprint = dataset_fingerprint(path)
    _require_validated(fingerprint, data, Path(vrules.report_dir) / "result.json")
    frame = read_dataset(path)
    dropped: dict[str, int] = {}
    frame = _drop_quarantined(frame, Path(vrules.quarantine_path), dropped)
    frame = _canonical(frame, data)
    frame = _normalise(frame, data, rules, dropped)
    redactions = _redact(frame, data) if data.pii_policy == "redact" else {}
    label_map = None
    if task_spec(data.task).labelled:
        label_map = {label: i for i, label in enumerate(sorted(frame["label"].unique()))}
        frame["label_id"] = frame["label"].map(label_map).astype("int64")
    assignment, too_rare = _split(frame, data, rules)
    card = _card(path, fingerprint, frame, assignment, dropped, redactions, too_rare, label_map, data, rules)
    planted = canaries.make(rules.canaries, rules.seed, fingerprint)
    with atomic_dir(rules.output_dir, owner="prepare") as tmp:
        for name in SPLITS:
            part = frame[assignment == name].reset_index(drop=True)
            if name == "train" and planted:  # after dedupe, redaction and the split: only training sees them
                extra = canaries.rows(planted, rules.canary_repeats, chat="messages" in frame.columns)
                part = pd.concat([part, pd.DataFrame(extra)], ignore_index=True)
            part.to_parquet(tmp / f"{name}.parquet", index=False)
        if planted:
            write_json(tmp / "canaries.json", [c.as_dict() for c in planted])
        if label_map is not None:
            write_json(tmp / "label_map.json", label_map)
        write_json(tmp / "data_card.json", card)
        (tmp / "data_card.md").write_text(_card_markdown(card), encoding="utf-8")
    sizes = ", ".join(f"{s} {card['splits'][s]['rows']}" for s in SPLITS)
    planted_note = f"; {len(planted)} canaries x{rules.canary_repeats} planted in train" if planted else ""
    print(f"prepared {rules.output_dir}: {sizes}; dropped {sum(dropped.values())} rows {dropped or ''}{planted_note}",
          file=sys.stderr)
    return card


def _require_validated(fingerprint: dict, data: DataParams, result_path: Path) -> None:
    if not result_path.exists():
        raise CheckFailed(f"no validation result at {result_path}; run `pipelines validate` first")
    result = json.loads(result_path.read_text(encoding="utf-8"))
    if not result.get("success"):
        raise CheckFailed(f"validation failed for this data ({result_path}); fix the data or the rules first")
    if result.get("dataset", {}).get("files") != fingerprint:
        raise CheckFailed(f"validation result {result_path} is stale: the data files changed since validation")
    if result.get("params", {}).get("data") != data.model_dump(mode="json"):
        raise CheckFailed(f"validation result {result_path} was made with other `data` params; validate again")


def _drop_quarantined(frame: pd.DataFrame, quarantine: Path, dropped: dict[str, int]) -> pd.DataFrame:
    if not quarantine.exists() or quarantine.stat().st_size == 0:
        return frame
    keys = {(r["_source"], int(r["_row"])) for r in map(json.loads, quarantine.read_text("utf-8").splitlines())}
    mask = pd.Series([(s, int(r)) in keys for s, r in zip(frame["_source"], frame["_row"])], index=frame.index)
    dropped["quarantined"] = int(mask.sum())
    return frame[~mask]


def _canonical(frame: pd.DataFrame, data: DataParams) -> pd.DataFrame:
    """Rename the contract columns to the canonical names later stages read."""
    if task_spec(data.task).labelled:
        cols = {data.text_column: "text", data.label_column: "label"}
    elif data.messages_column in frame.columns and data.prompt_column not in frame.columns:
        cols = {data.messages_column: "messages"}
    else:
        cols = {data.prompt_column: "prompt", data.response_column: "response"}
    out = frame[list(cols) + ["_source", "_row"]].rename(columns=cols)
    if "messages" in out.columns:
        out["messages"] = out["messages"].map(parse_messages)
    for col in ("text", "label", "prompt", "response"):
        if col in out.columns:
            out[col] = out[col].astype("string")
    out["_source"] = out["_source"].astype(str)
    return out


def _normalise(frame: pd.DataFrame, data: DataParams, rules: PrepareParams, dropped: dict[str, int]) -> pd.DataFrame:
    for col in ("text", "prompt", "response"):
        if col in frame.columns:
            frame[col] = normalise_text(frame[col], rules.unicode_form, rules.lowercase)
    if "label" in frame.columns:
        frame["label"] = frame["label"].str.strip()
    if "messages" in frame.columns:
        frame["messages"] = frame["messages"].map(lambda m: json.dumps(
            [{**t, "content": " ".join(str(t["content"]).split())} for t in m], ensure_ascii=False))
    content = [c for c in ("text", "prompt", "response", "messages", "label") if c in frame.columns]
    empty = frame[content].isna().any(axis=1) | (frame[content] == "").any(axis=1)
    if empty.any():
        dropped["empty_after_normalisation"] = int(empty.sum())
        frame = frame[~empty]
    if rules.drop_duplicates:
        dup = frame.duplicated(subset=content, keep="first")
        if dup.any():
            dropped["exact_duplicates"] = int(dup.sum())
            frame = frame[~dup]
    return frame.reset_index(drop=True)


def _redact(frame: pd.DataFrame, data: DataParams) -> dict[str, int]:
    totals: dict[str, int] = {}
    for col in (c for c in ("text", "prompt", "response", "messages") if c in frame.columns):
        hits = pd.Series(False, index=frame.index)
        for kind in data.pii_detectors:
            hits |= pii.detect(frame[col], kind)
        for i in frame.index[hits]:
            frame.at[i, col], counts = pii.redact(frame.at[i, col], data.pii_detectors)
            for kind, n in counts.items():
                totals[kind] = totals.get(kind, 0) + n
    return totals


def _split(frame: pd.DataFrame, data: DataParams, rules: PrepareParams) -> tuple[pd.Series, list[str]]:
    """Stratified (classification) or plain random split with a fixed seed."""
    rng = np.random.default_rng(rules.seed)
    assignment = pd.Series("train", index=frame.index, dtype=object)
    groups = frame.groupby("label").groups if task_spec(data.task).labelled else {None: frame.index}
    too_rare = []
    for key in sorted(groups, key=lambda k: (k is None, k)):
        idx = np.array(sorted(groups[key]))
        rng.shuffle(idx)
        n = len(idx)
        if n < 3 and key is not None:
            too_rare.append(str(key))
            continue
        n_val = _share(n, rules.split.validation)
        n_test = _share(n, rules.split.test)
        assignment.loc[idx[:n_val]] = "validation"
        assignment.loc[idx[n_val:n_val + n_test]] = "test"
    return assignment, too_rare


def _share(n: int, fraction: float) -> int:
    if fraction == 0:
        return 0
    return max(1, int(round(n * fraction)))


def _lengths(series: pd.Series) -> dict[str, float]:
    chars = series.astype(str).str.len()
    words = series.astype(str).str.split().str.len()
    return {
        "chars_min": int(chars.min()), "chars_mean": round(float(chars.mean()), 2),
        "chars_p50": round(float(chars.quantile(0.5)), 2), "chars_p95": round(float(chars.quantile(0.95)), 2),
        "chars_max": int(chars.max()), "words_mean": round(float(words.mean()), 2),
    }


def _card(path, fingerprint, frame, assignment, dropped, redactions, too_rare, label_map, data, rules) -> dict:
    main_col = next(c for c in ("text", "prompt", "messages") if c in frame.columns)
    splits = {}
    for name in SPLITS:
        part = frame[assignment == name]
        info: dict[str, Any] = {"rows": int(len(part))}
        if len(part):
            info["lengths"] = _lengths(part[main_col])
        if "label" in part.columns:
            info["labels"] = {str(k): int(v) for k, v in part["label"].value_counts().sort_index().items()}
        splits[name] = info
    return {
        "source": {"path": str(path), "files": fingerprint},
        "task": data.task,
        "columns": {"canonical": [c for c in frame.columns if not c.startswith("_")],
                    "from": {"text": data.text_column, "label": data.label_column} if task_spec(data.task).labelled
                    else {"prompt": data.prompt_column, "response": data.response_column,
                          "messages": data.messages_column}},
        "rows": int(len(frame)),
        "splits": splits,
        "num_labels": len(label_map) if label_map is not None else None,
        "labels_too_rare_to_split": too_rare,
        "dropped": dropped,
        "pii_policy": data.pii_policy,
        "pii_redactions": redactions,
        "canaries_planted": {"canaries": rules.canaries, "train_rows": rules.canaries * rules.canary_repeats},
        "params": rules.model_dump(mode="json"),
    }


def _card_markdown(card: dict) -> str:
    lines = [f"# Data card: {card['source']['path']}", "", f"Task: {card['task']}; rows kept: {card['rows']}", ""]
    lines += ["| split | rows | mean chars | p95 chars |", "|---|---|---|---|"]
    for name, info in card["splits"].items():
        ln = info.get("lengths", {})
        lines.append(f"| {name} | {info['rows']} | {ln.get('chars_mean', '-')} | {ln.get('chars_p95', '-')} |")
    lines += ["", "Dropped: " + (", ".join(f"{k} {v}" for k, v in card["dropped"].items()) or "nothing"),
              f"PII ({card['pii_policy']}): " + (", ".join(f"{k} {v}" for k, v in card["pii_redactions"].items())
                                                 or "none found"), "", "Source files:"]
    lines += [f"- `{f}` md5 {h['md5']}" for f, h in card["source"]["files"].items()]
    return "\n".join(lines) + "\n"
