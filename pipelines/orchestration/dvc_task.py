"""All the DVC work of one stage task in one interpreter, run in the task's checkout:

    python -m pipelines.orchestration.dvc_task <project dir> <stage>
    python -m pipelines.orchestration.dvc_task <project dir> --add <path>

A stage: pull the stage's inputs that DVC tracks and the checkout lacks; reproduce the stage, or restore it
from DVC's run-cache (pulled from the remote); push its outputs and the run-cache. DVC's own messages
go to the output as the `dvc` command prints them. Exit 0 on success; on failure the last line names
the failure (`... exited with N` when the stage's command failed with N). One interpreter instead of
a `dvc` process per step: a stage task's fixed cost is dominated by starting DVC. `--add`: `dvc add`
the path and push it (the run's dataset snapshot), also in one interpreter.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path


def missing_inputs(repo, dvcfile: Path, stage: str) -> list[str]:
    """The stage's inputs DVC tracks (outputs of earlier stages, `dvc add`ed data) absent from the checkout."""
    found = repo.stage.collect(f"{dvcfile}:{stage}")
    tracked = [out.fs_path for out in repo.index.outs]
    missing = [dep.fs_path for st in found for dep in st.deps if not dep.exists]
    return [p for p in missing if any(p == out or p.startswith(out.rstrip("/") + "/") for out in tracked)]


class _Restored(logging.Handler):
    """Notices DVC saying that the stage did not run (restored from the run-cache, or unchanged)."""

    def __init__(self) -> None:
        super().__init__()
        self.restored = False

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.restored |= "is cached - skipping run" in message or "didn't change, skipping" in message


def _failed(step: str, err: Exception) -> int:
    """DVC's errors and the remote's (OSError, ...): one line for the caller."""
    chain, cause = [str(err) or type(err).__name__], err.__cause__
    while cause is not None:
        chain.append(str(cause))
        cause = cause.__cause__
    print(f"ERROR: dvc {step}: {': '.join(chain)}", flush=True)
    return 1


def add(project: Path, path: str) -> int:
    """`dvc add` a path of the model's folder and push what it tracks."""
    from dvc.repo import Repo

    step = "add"
    try:
        with Repo(str(project)) as repo:
            repo.add([path])
            step = "push"
            repo.push(targets=[f"{path}.dvc"])
    except Exception as err:
        return _failed(step, err)
    return 0


def run(project: Path, stage: str) -> int:
    from dvc.repo import Repo  # importing DVC sets up its console logging (as the `dvc` command prints)

    seen = _Restored()
    logging.getLogger("dvc").addHandler(seen)
    dvcfile = project.resolve() / "dvc.yaml"
    target = f"{dvcfile}:{stage}"
    step = "pull"
    try:
        with Repo(str(project)) as repo:
            missing = missing_inputs(repo, dvcfile, stage)
            if missing:  # absolute paths: `repro --pull` resolves a sub-folder stage's inputs wrongly (DVC 3.67)
                repo.pull(targets=missing)
            step = "repro"
            repo.reproduce(target, single_item=True, pull=True)
            if not seen.restored:  # a restored stage's outputs and run-cache entry are on the remote already
                step = "push"
                repo.push(targets=[target], run_cache=True)
    except Exception as err:
        return _failed(step, err)
    return 0


if __name__ == "__main__":
    if sys.argv[2] == "--add":
        raise SystemExit(add(Path(sys.argv[1]), sys.argv[3]))
    raise SystemExit(run(Path(sys.argv[1]), sys.argv[2]))
