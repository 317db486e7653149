"""MkDocs hook: the reference pages generated from the code at build time (pipelines.devtools.reference)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's `pipelines` package

from mkdocs.structure.files import File  # noqa: E402

from pipelines.devtools.reference import cli_markdown, params_markdown  # noqa: E402


def on_files(files, config):
    files.append(File.generated(config, "reference/cli.md", content=cli_markdown()))
    files.append(File.generated(config, "reference/params.md", content=params_markdown()))
    return files
