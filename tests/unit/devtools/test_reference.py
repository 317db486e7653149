"""The generated reference pages: every command of the parser, every params key with its type, default
and a description (a key added without one fails here, so the reference never has holes)."""
from __future__ import annotations

import argparse
from typing import get_origin

import pytest

from pipelines.cli import build_parser
from pipelines.core.config import Params
from pipelines.devtools.reference import _model_in, cli_markdown, params_markdown


def _commands(parser, prefix=""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                inner = list(_commands(sub, f"{prefix}{name} "))
                yield from inner or [f"{prefix}{name}"]


def _keys(model, path):
    for name, field in model.model_fields.items():
        key = f"{path}.{field.alias or name}"
        yield key
        inner = _model_in(field.annotation)
        if inner is not None:
            yield from _keys(inner, f"{key}.<name>" if get_origin(field.annotation) is dict else key)


def test_every_command_is_in_the_command_reference():
    page = cli_markdown()
    commands = list(_commands(build_parser()))
    assert {"init", "validate", "route tune", "registry", "serve"} <= set(commands)
    for name in commands:
        assert f"## `pipelines {name}`" in page, name
    assert "`--holdout-share`" in page and "default `0.1`" in page


PAGE = params_markdown()
ROWS = {line.split("|")[1].strip().strip("`"): [c.strip() for c in line.split("|")[2:5]]
        for line in PAGE.splitlines() if line.startswith("| `")}


@pytest.mark.parametrize("key", [k for name, f in Params.model_fields.items() if _model_in(f.annotation)
                                 for k in _keys(_model_in(f.annotation), f.alias or name)])
def test_every_params_key_has_a_type_a_default_and_a_description(key):
    assert key in ROWS, key
    kind, default, what = ROWS[key]
    assert kind and default and what, f"{key}: document it with a comment on its line in pipelines/core/config.py"


@pytest.mark.parametrize("key, kind, default", [
    ("train.lora.r", "int", "`16`"),
    ("data.task", "str", "`classification`"),
    ("gate.significance", "one of `mcnemar`, `bootstrap`", "`mcnemar`"),
    ("validate.allowed_labels", "list of str or null", "null"),
    ("cost.api.<name>.as_of", "date", "`required`"),
])
def test_types_and_defaults_are_the_models(key, kind, default):
    assert ROWS[key][:2] == [kind, default]
