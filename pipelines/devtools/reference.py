"""The documentation's reference pages, generated from the code so they cannot drift from it.

Inputs: the `pipelines` argument parser (`cli.build_parser`) and the params models
(`core.config.Params`: each field's type and default, and the comment on its line in the model's source,
which is where this project documents a key). Outputs: two Markdown pages, every command and every
params key, which the MkDocs hook (`docs/hooks/reference.py`) adds to the site at build time.
"""
from __future__ import annotations

import argparse
import inspect
import re
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pipelines.core.config import Params


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------- commands

def cli_markdown() -> str:
    from pipelines.cli import build_parser

    parser = build_parser()
    out = ["# Command reference", "",
           "Generated from the argument parser (`pipelines/cli.py`) when the site is built. Every command "
           "also answers `--help`. Options before the command apply to all of them:", "",
           *_options(parser), ""]
    for name, sub, help_text in _commands(parser):
        out += [f"## `pipelines {name}`", "", _cell(help_text or sub.description or ""), "",
                "```text", sub.format_usage().strip(), "```", "", *_options(sub), ""]
    return "\n".join(out)


def _commands(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
                if nested:
                    yield from _commands(sub, f"{prefix}{name} ")
                else:
                    yield f"{prefix}{name}", sub, helps.get(name)


def _options(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        flags = ", ".join(f"`{s}`" for s in a.option_strings) or f"`{a.dest}`"
        extra = []
        if a.choices:
            extra.append("one of " + ", ".join(f"`{c}`" for c in a.choices))
        if a.default not in (None, False, argparse.SUPPRESS) and a.option_strings:
            extra.append(f"default `{a.default}`")
        if a.required and a.option_strings:
            extra.append("required")
        rows.append(f"| {flags} | {_cell(a.help or '')}{' (' + '; '.join(extra) + ')' if extra else ''} |")
    return ["| option | what |", "|---|---|", *rows] if rows else ["No options."]


# ---------------------------------------------------------------- params

def params_markdown() -> str:
    out = ["# Params reference", "",
           "Every key of a model's `params.yaml`, generated from the pydantic models in "
           "`pipelines/core/config.py` when the site is built: the type, the default, and the comment the "
           "model carries. Unknown keys are refused with a message naming them. A model folder's "
           "`params.yaml` may set any of them; the shipped ones show them in use.", ""]
    for name, field in Params.model_fields.items():
        section = field.annotation
        if not (inspect.isclass(section) and issubclass(section, BaseModel)):
            continue
        out += [f"## `{field.alias or name}`", "", _cell(_doc(section)), "", *_table(section, field.alias or name), ""]
    return "\n".join(out)


def _doc(model: type[BaseModel]) -> str:
    return inspect.cleandoc(model.__doc__ or "").split("\n\n")[0]


def _table(model: type[BaseModel], path: str) -> list[str]:
    notes = _comments(model)
    rows, nested = [], []
    for name, field in model.model_fields.items():
        key = f"{path}.{field.alias or name}"
        inner = _model_in(field.annotation)
        if inner is not None:
            named = get_origin(field.annotation) is dict  # a mapping of named entries, each a section
            rows.append(f"| `{key}` | {'mapping of name to section' if named else 'section'} | see below | "
                        f"{_cell(notes.get(name) or _doc(inner))} |")
            nested.append((f"{key}.<name>" if named else key, inner))
            continue
        rows.append(f"| `{key}` | {_cell(_type(field.annotation))} | {_cell(_default(field))} | "
                    f"{_cell(notes.get(name, ''))} |")
    out = ["| key | type | default | what |", "|---|---|---|---|", *rows]
    for key, inner in nested:
        out += ["", f"### `{key}`", "", *_table(inner, key)]
    return out


def _model_in(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *get_args(annotation)):
        if inspect.isclass(candidate) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _comments(model: type[BaseModel]) -> dict[str, str]:
    """The comment on each field's line of the model's source (how this project documents a key)."""
    found: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(model).splitlines():
        m = re.match(r"^\s{4}(\w+)\s*:[^#]*?(?:#\s*(.+))?$", line)
        if m and m.group(1) in model.model_fields:
            found[m.group(1)] = " ".join([*above, m.group(2) or ""]).strip()
        comment = re.match(r"^\s{4}#\s*(.+)$", line)
        above = [*above, comment.group(1).strip()] if comment else []
    return {name: text for name, text in found.items() if text}


def _type(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type(a) for a in args)
    if origin in (tuple, list):
        return f"list of {_type(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type(args[0])} to {_type(args[1])}" if args else "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    value = field.default if field.default is not PydanticUndefined else (
        field.default_factory() if field.default_factory else "required")
    if value is None:
        return "null"
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return f"`{value}`" if value != "" else '`""`'
