"""A run's form values: re-checked against the model's params, turned into params changes and applied
to the params file of the run's own workspace (the user's params.yaml is never edited).

Inputs: the raw conf (the DAG form), the model's `Params`. Outputs: `RunConf`, the overrides
(section -> key -> value, only what differs), and `apply_overrides(path, changes)`.
"""
from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from pipelines.core.config import Params, parse_params, read_yaml
from pipelines.core.dataio import atomic_write_text
from pipelines.core.errors import ConfigError


class RunConf(BaseModel):
    """The params form of a UI-triggered run; None = keep the model's params.yaml value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = "default"
    base_model: str | None = None
    epochs: int | None = None
    learning_rate: float | None = None
    lora_rank: int | None = None
    min_accuracy: float | None = None
    min_macro_f1: float | None = None
    require_approval: bool = False


def check_conf(raw: dict[str, Any] | None, params: Params) -> RunConf:
    """Validate a run's values again (the DAG form did too): types, then the params' `lifecycle` bounds."""
    try:
        conf = RunConf.model_validate(raw or {})
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"run conf: unknown field '{field}'" if first["type"] == "extra_forbidden"
                          else f"run conf: invalid '{field}': {first['msg']}") from None
    lc = params.lifecycle
    low, high = lc.learning_rate_range
    problems = [
        (conf.dataset not in lc.datasets, f"dataset {conf.dataset!r} is not one of {sorted(lc.datasets)}"),
        (conf.base_model is not None and conf.base_model not in lc.base_models,
         f"base_model {conf.base_model!r} is not in the allowlist {list(lc.base_models)}"),
        (conf.epochs is not None and not 1 <= conf.epochs <= lc.max_epochs, f"epochs must be 1..{lc.max_epochs}"),
        (conf.learning_rate is not None and not low <= conf.learning_rate <= high,
         f"learning_rate must be within [{low}, {high}]"),
        (conf.lora_rank is not None and conf.lora_rank not in lc.lora_ranks, f"lora_rank must be one of {list(lc.lora_ranks)}"),
        (conf.min_accuracy is not None and not lc.gate_floor.min_accuracy <= conf.min_accuracy <= 1,
         f"min_accuracy must be within [{lc.gate_floor.min_accuracy}, 1]"),
        (conf.min_macro_f1 is not None and not lc.gate_floor.min_macro_f1 <= conf.min_macro_f1 <= 1,
         f"min_macro_f1 must be within [{lc.gate_floor.min_macro_f1}, 1]"),
    ]
    for bad, message in problems:
        if bad:
            raise ConfigError(f"run conf: {message}")
    return conf


def overrides(conf: RunConf, params: Params) -> dict[str, dict[str, Any]]:
    """The params changes a run asks for, only where they differ from the file."""
    tp, gp = params.train, params.gate
    wanted: dict[str, dict[str, Any]] = {
        "train": {"base_model": conf.base_model, "epochs": conf.epochs, "learning_rate": conf.learning_rate},
        "gate": {"min_accuracy": conf.min_accuracy, "min_macro_f1": conf.min_macro_f1},
    }
    if conf.lora_rank is not None and conf.lora_rank != tp.lora.r:  # keep alpha / r, the LoRA scale
        wanted["train"]["lora"] = {"r": conf.lora_rank, "alpha": tp.lora.alpha * conf.lora_rank / tp.lora.r}
    current = {"train": tp, "gate": gp}
    changes: dict[str, dict[str, Any]] = {}
    for section, values in wanted.items():
        for key, value in values.items():
            have = getattr(current[section], key)
            if key == "lora":
                have = have.model_dump()
                value = {**have, **value}
            if value is not None and value != have:
                changes.setdefault(section, {})[key] = value
    return changes


def apply_overrides(path: Path, changes: dict[str, dict[str, Any]]) -> bool:
    """Write `changes` into the params file at `path` (comments kept); the result must parse."""
    if not changes:
        return False
    from ruamel.yaml import YAML

    rt = YAML()
    doc = rt.load(path.read_text(encoding="utf-8"))
    for section, values in changes.items():
        if doc.get(section) is None:
            doc[section] = {}
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(doc[section].get(key), dict):
                for sub, v in value.items():
                    doc[section][key][sub] = v
            else:
                doc[section][key] = value
    out = StringIO()
    rt.dump(doc, out)
    parse_params(read_yaml(out.getvalue()) or {}, str(path))  # never write a params file the stages reject
    atomic_write_text(path, out.getvalue())
    return True
