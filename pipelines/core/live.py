"""A stage's metrics and per-step series written by DVCLive, in DVCLive's layout.

Inputs: a directory (a stage's report dir, or the temporary one it becomes), the summary the stage
measured, and optionally rows of a series (`step` plus one value per column). Outputs, in that
directory: `metrics.json` (the summary, plus the series' last values and `step`) and
`plots/metrics/<column>.tsv` per column: what `dvc metrics show/diff`, `dvc plots show/diff`,
`dvc exp show` and DVC Studio read as a DVCLive run.

DVCLive writes the files and nothing else: the stage already runs under `dvc repro` or `dvc exp run`,
which version them (dvc.yaml declares them). So `Live`'s repository integration is left out: it would
`dvc init` a plain git checkout, fails in a repository without commits, and its `end()` inside
`dvc exp run` would `git add` the stage's temporary directory. Only `make_summary` is called.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

PLOTS = Path("plots") / "metrics"  # DVCLive's folder for logged series


def _files_only():
    from dvclive import Live

    class FilesOnly(Live):
        def _init_dvc(self) -> None:  # no repository, experiment or Studio: just DVCLive's files
            self._dvc_file = "dvc.yaml"

    return FilesOnly


def write(directory: str | Path, summary: dict[str, Any], series: Iterable[dict[str, Any]] = (),
          x: str = "step") -> None:
    live = _files_only()(dir=str(directory), save_dvc_exp=False, dvcyaml=None, report=None)
    for row in series:
        live.step = int(row[x])
        for name, value in row.items():
            if name != x and value is not None:
                live.log_metric(name, value)
    live.summary.update(summary)  # what the stage measured, beside the series' last values
    live.make_summary()
