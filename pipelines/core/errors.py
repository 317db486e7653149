"""Exceptions that the CLI turns into one-line messages and exit codes.

Inputs: raised anywhere in `pipelines`. Outputs: `cli.main` prints `error: <message>`
to stderr and exits with `exit_code`; no traceback ever reaches the user for these.
"""
from __future__ import annotations


class PipelineError(Exception):
    """Base class: a problem the user can fix, reported on one line."""

    exit_code = 2


class InputError(PipelineError):
    """The input cannot be read as a dataset (missing, empty, binary, malformed...)."""

    exit_code = 2


class ConfigError(PipelineError):
    """params.yaml or a CLI flag is invalid."""

    exit_code = 2


class CheckFailed(PipelineError):
    """The data was read but does not meet the contract (validation failed, stale inputs)."""

    exit_code = 1


class OutputError(PipelineError):
    """An output path would overwrite or delete something the stage does not own."""

    exit_code = 2
