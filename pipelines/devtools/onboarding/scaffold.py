"""A new model folder from a user's own data file: `pipelines init NAME --data FILE`.

Inputs: the checkout's `projects/` folder, the new model's name, the data file (CSV, JSONL or Parquet),
the task and columns (named, or inferred: see `columns.py`), the model folder to start from (`like`:
its params with their comments, its stages) and the share of rows carved out as the reviewed holdout.
Outputs: `projects/NAME/`, written in one rename:
  params.yaml          the like-model's, comments kept, with this data's task, columns and the model's name
  dvc.yaml             a link to the like-model's stages (one definition of the stages per task)
  data/raw/<file>      the first drop: every row not carved out (git-ignored; the lifecycle versions it)
  golden/holdout.csv   classification: a share of each label, for a person to review (golden/REVIEW.md)
The data contract (the `validate` stage's GX suite, with these params) runs on the file first. Nothing is
written when the name is bad, the folder exists, or the data is unreadable or fails the contract.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipelines.core.config import Params, check_model_name, load_params, parse_params, read_yaml
from pipelines.core.contract import is_json_object, parse_messages
from pipelines.core.dataio import read_dataset
from pipelines.core.errors import ConfigError, InputError
from pipelines.core.hashing import sha256_file
from pipelines.core import pii
from pipelines.devtools.onboarding.columns import Columns, choose

LIKE = {"classification": "text-classifier", "causal_lm": "support-assistant"}
HOLDOUT = "golden/holdout.csv"


@dataclass(frozen=True)
class Plan:
    """What `init` will write, for the user to confirm before anything is written."""

    name: str
    folder: Path
    like: str
    columns: Columns
    params: Params
    params_text: str
    drop: pd.DataFrame
    holdout: pd.DataFrame | None
    source: Path
    quarantined: int
    notes: list[str] = field(default_factory=list)


def plan(projects: Path, name: str, data: Path, task: str | None = None, named: dict | None = None,
         like: str | None = None, holdout_share: float = 0.1, seed: int = 0) -> Plan:
    """Check everything and decide every file; write nothing."""
    check_model_name(name)
    folder = projects / name
    if folder.exists() or folder.is_symlink():
        raise ConfigError(f"init: projects/{name}/ exists; a model folder is never overwritten (choose another name)")
    if not 0 < holdout_share < 0.5:
        raise ConfigError(f"--holdout-share must be above 0 and below 0.5, not {holdout_share}")
    if Path(data).is_dir():
        raise InputError(f"--data {data}: a directory; name one file (more drops land in data/raw/ later)")
    frame = read_dataset(data)
    like_params = None
    if like is not None:  # a model to start from decides the task unless --task says it
        like_params = _like_params(projects, like)
        like_task = load_params(like_params).data.task
        if task and task != like_task:
            raise ConfigError(f"--like {like}: a {like_task} model, and --task says {task}")
        task = like_task
    columns = choose(frame, task, named or {}, str(data))
    _suitable(frame, columns, data)
    like = like or LIKE[columns.task]
    like_params = like_params or _like_params(projects, like)
    updates = _updates(name, columns, frame)
    text = edit_params(like_params.read_text(encoding="utf-8"), updates, _header(name, data, like))
    params = parse_params(read_yaml(text) or {}, f"projects/{name}/params.yaml")
    quarantined = _contract(frame, params, data)
    holdout = _holdout(frame, params, holdout_share, seed) if columns.task == "classification" else None
    drop = frame.drop(index=holdout.index) if holdout is not None else frame
    notes = [] if holdout is not None else [
        "a generative model is judged on golden/prompts.jsonl (prompt, expect regex) cases a person writes: "
        "add them, then set evaluate.golden_prompts and gate.min_golden_pass_rate"]
    return Plan(name, folder, like, columns, params, text, drop, holdout, Path(data), quarantined, notes)


def _like_params(projects: Path, like: str) -> Path:
    path = projects / check_model_name(like) / "params.yaml"
    if not path.is_file():
        raise ConfigError(f"--like {like}: no model folder projects/{like}/ (models: "
                          f"{', '.join(sorted(p.parent.name for p in projects.glob('*/params.yaml')))})")
    return path


def _suitable(frame: pd.DataFrame, columns: Columns, data: Path) -> None:
    """What the data contract checks per drop cannot say: a classifier needs two labels to tell apart."""
    if columns.task == "classification":
        labels = frame[columns.chosen["label"]].dropna().unique()
        if len(labels) < 2:
            raise InputError(f"{data}: the label column {columns.chosen['label']!r} holds "
                             f"{'one label' if len(labels) else 'no label'}; a classifier needs two or more")


def _updates(name: str, columns: Columns, frame: pd.DataFrame) -> dict[str, dict]:
    data = {"raw": "data/raw", "task": columns.task, **{f"{role}_column": col for role, col in columns.chosen.items()}}
    updates = {"data": data, "registry": {"model_name": name}, "validate": {"allowed_labels": None}}
    if columns.task == "classification":
        updates["evaluate"] = {"holdout": HOLDOUT}
    else:
        data["response_format"] = "json_object" if _answers(frame, columns).map(is_json_object).all() else "text"
        updates["evaluate"] = {"holdout": None, "golden_prompts": None}
        updates["gate"] = {"min_golden_pass_rate": None}
    return updates


def _answers(frame: pd.DataFrame, columns: Columns) -> pd.Series:
    """Every answer of a causal-LM file: the response column, or each chat's assistant turns."""
    if "response" in columns.chosen:
        return frame[columns.chosen["response"]].dropna()
    turns = frame[columns.chosen["messages"]].map(parse_messages)
    return pd.Series([t.get("content", "") for chat in turns if isinstance(chat, list) for t in chat
                      if isinstance(t, dict) and t.get("role") == "assistant"], dtype=object)


def _header(name: str, data: Path, like: str) -> str:
    return (f"# The model {name}, made by `pipelines init` from {Path(data).name} (sha256 {sha256_file(data)[:16]}),\n"
            f"# starting from {like}'s params. Each top-level section is read by the stage (and the Airflow task)\n"
            "# of the same name; `data` is the contract all stages share. Relative paths are relative to this\n"
            "# folder. Unknown keys are rejected with a message naming them. Review `gate` (the promotion policy)\n"
            "# and `lifecycle.schedule` before the first run.\n\n")


def edit_params(text: str, updates: dict[str, dict], header: str) -> str:
    """The like-model's params text with `updates` set, every comment kept (ruamel's round trip); its
    opening comment block is replaced by `header`."""
    from ruamel.yaml import YAML

    lines = text.splitlines(keepends=True)
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)  # the platform's params style
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = yaml.load("".join(lines))
    for section, values in updates.items():
        if section not in doc:
            raise ConfigError(f"the like-model's params have no {section!r} section")
        for key, value in values.items():
            if value is not None or key in doc[section]:  # a default left unset stays unset
                doc[section][key] = value
    out = io.StringIO()
    yaml.dump(doc, out)
    return header + out.getvalue()


def _contract(frame: pd.DataFrame, params: Params, data: Path) -> int:
    """The data contract on the file; its failure is one line naming the failed checks."""
    from pipelines.stages.validate import run_suite

    outcome = run_suite(frame, params.data, params.validate_)
    if not outcome.success:
        failed = "; ".join(f"{c.check}" + (f" ({c.detail})" if c.detail else "") for c in outcome.failed[:3])
        raise InputError(f"{data} does not meet the data contract: {failed}"
                         + (f" (+{len(outcome.failed) - 3} more)" if len(outcome.failed) > 3 else ""))
    return len(outcome.quarantine)


def _holdout(frame: pd.DataFrame, params: Params, share: float, seed: int) -> pd.DataFrame:
    """A share of each label's clean rows (no PII: the file is kept in git), leaving training at least the
    contract's minimum per label."""
    data, keep = params.data, params.validate_.min_examples_per_label
    text = frame[data.text_column].astype("string")
    clean = frame[~pd.concat([pii.detect(text, kind) for kind in data.pii_detectors], axis=1).any(axis=1)
                  & text.str.strip().ne("") & frame[data.label_column].notna()]
    totals, picked = frame[data.label_column].value_counts(), []
    for label, rows in clean.groupby(data.label_column, sort=True):
        total = int(totals[label])
        n = min(max(1, round(share * total)), len(rows), total - keep)
        if n > 0:
            picked.append(rows.sample(n=n, random_state=seed))
    if not picked:
        raise InputError(f"every label has too few rows for a holdout beside the {keep} training needs")
    return pd.concat(picked).sort_index()


def write(p: Plan) -> Path:
    """Write the planned folder in one rename (a half-written folder never appears under projects/)."""
    tmp = Path(tempfile.mkdtemp(dir=p.folder.parent, prefix=f".{p.name}.", suffix=".init"))
    try:
        (tmp / "params.yaml").write_text(p.params_text, encoding="utf-8")
        target = (p.folder.parent / p.like / "dvc.yaml").resolve()
        os.symlink(os.path.relpath(target, p.folder), tmp / "dvc.yaml")
        raw = tmp / "data" / "raw" / p.source.name
        raw.parent.mkdir(parents=True)
        _write_rows(p.drop, raw)
        if p.holdout is not None:
            data = p.params.data
            (tmp / "golden").mkdir()
            p.holdout[[data.text_column, data.label_column]].to_csv(tmp / HOLDOUT, index=False)
            (tmp / "golden" / "REVIEW.md").write_text(_review_note(p), encoding="utf-8")
        tmp.chmod(0o755)
        os.rename(tmp, p.folder)  # fails, writing nothing, if the folder appeared meanwhile
    except FileExistsError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"init: projects/{p.name}/ appeared meanwhile; nothing written") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return p.folder


def _write_rows(frame: pd.DataFrame, path: Path) -> None:
    rows = frame[[c for c in frame.columns if not str(c).startswith("_")]]
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows.to_parquet(path, index=False)
    elif suffix == ".jsonl":
        rows.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        rows.to_csv(path, index=False)


def _review_note(p: Plan) -> str:
    return (f"# golden/holdout.csv: NOT REVIEWED YET\n\n"
            f"`pipelines init` carved these {len(p.holdout)} rows at random, per label, out of {p.source.name}; they are\n"
            "not in the training data. The gate scores every version of this model on them, so their labels must be\n"
            "right: a person reads each row, corrects a wrong label, removes a row that is ambiguous, and then\n"
            "deletes this file in the same commit (git keeps who reviewed and when).\n")


def summary(p: Plan, rel: Path) -> str:
    """What was written and the commands that come next."""
    lines = [f"created {rel}/ ({p.columns.task}, like {p.like})",
             f"  data/raw/{p.source.name:<22} {len(p.drop)} rows: the first drop"
             + (f" ({p.quarantined} will be quarantined by validate)" if p.quarantined else "")]
    if p.holdout is not None:
        lines.append(f"  {HOLDOUT:<31} {len(p.holdout)} rows carved per label: REVIEW them (golden/REVIEW.md)")
    lines += [f"  params.yaml{'':<21} read its comments; the gate's floors are {p.like}'s", *[f"  note: {n}" for n in p.notes],
              "next:",
              f"  git add {rel} && git commit -m 'Add the {p.name} model'   # a lifecycle run checks out what git holds",
              f"  pipelines --model {p.name} validate                  # the data contract, with Data Docs",
              f"  airflow dags trigger lifecycle__{p.name}             # or the Airflow UI's form (./dev.sh demo sets Airflow up)"]
    return "\n".join(lines)
