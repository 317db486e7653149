"""Where a task runs: a disposable checkout of its run's commit, wired to the shared remotes.

Inputs: `Shared` (the git remote, the DVC remote, this worker's DVC cache and scratch directory;
the registry root comes from each model's params) and a `RunRef` (model, project folder, the run's
git ref and commit, passed between tasks by XCom). Outputs: `TaskSpace`, a checkout under the
worker's scratch directory with `.dvc/config.local` pointing at the shared remote and the worker's
own cache; `run_dvc` runs DVC there with the checkout's own code first on the Python path (the code
of the run's commit is the code that runs, the code `dvc.lock` hashes); `commit` records the
task's results as a new commit on the run's ref. The checkout is removed when the task ends.
Nothing here reads the process' working directory or environment.
"""
from __future__ import annotations

import configparser
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from pipelines.core.errors import CheckFailed, ConfigError
from pipelines.orchestration import gitops
from pipelines.orchestration.gitops import TransientError


@dataclass(frozen=True)
class Shared:
    """What every task of every worker shares, and this worker's own places."""

    git_remote: str                 # a path or URL; runs start from its HEAD and push refs/runs/... to it
    cache_dir: str                  # this worker's DVC cache (never shared between machines)
    scratch: str                    # where this worker makes (and removes) task workspaces
    dvc_remote: str | None = None   # overrides the repository's default DVC remote URL

    @property
    def local_source(self) -> Path | None:
        path = Path(self.git_remote)
        return path if "://" not in self.git_remote and path.is_dir() else None

    def resolve(self, project: str, location: str, what: str) -> str:
        """A params location as every worker sees it: URLs and absolute paths as they are; a relative
        path is relative to the model's folder in the source checkout (only when that is local)."""
        if "://" in location or Path(location).is_absolute():
            return location
        if self.local_source is None and "://" not in self.git_remote and ":" not in self.git_remote:
            raise ConfigError(f"the git remote {self.git_remote} does not exist (the checkout moved or was "
                              "deleted?): set PIPELINES_GIT_REMOTE (and PIPELINES_REPO) to where it is now")
        if self.local_source is None:
            raise ConfigError(f"{what} {location!r} is relative, but the git remote {self.git_remote} is not a "
                              "local checkout: give an absolute path or a URL every worker can reach")
        return os.path.normpath(self.local_source / project / location)


@dataclass(frozen=True)
class RunRef:
    """A run as it travels between tasks (by XCom): which model, and the commit its last task left."""

    model: str
    project: str        # the model's folder in the repository, e.g. projects/text-classifier
    run_id: str
    ref: str            # refs/runs/<model>/<run>
    commit: str

    def to_xcom(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def of(cls, value: dict) -> "RunRef":
        return cls(**{k: value[k] for k in ("model", "project", "run_id", "ref", "commit")})


def run_ref_name(model: str, run_id: str) -> str:
    return f"refs/runs/{model}/{re.sub(r'[^A-Za-z0-9._-]', '_', run_id)}"


def dvc_remote_url(shared: Shared, checkout: Path) -> tuple[str, str]:
    """(name, URL) of the default DVC remote as every worker reaches it."""
    conf = configparser.ConfigParser(strict=False, interpolation=None)
    conf.read(checkout / ".dvc" / "config", encoding="utf-8")
    name = conf.get("core", "remote", fallback="") if conf.has_section("core") else ""
    if not name:
        raise ConfigError("the repository has no default DVC remote (dvc remote add -d NAME URL)")
    if shared.dvc_remote:
        return name, shared.dvc_remote
    url = next((conf[s].get("url") for s in conf.sections() if s.strip("'") == f'remote "{name}"'), None)
    if not url:
        raise ConfigError(f"the DVC remote {name!r} has no url")
    if "://" in url or Path(url).is_absolute():
        return name, url
    if shared.local_source is None:
        raise ConfigError(f"the DVC remote {name!r} is a relative path ({url}); with a remote git repository "
                          "set its URL for the workers (PIPELINES_DVC_REMOTE)")
    return name, os.path.normpath(shared.local_source / ".dvc" / url)


@dataclass
class TaskSpace:
    shared: Shared
    run: RunRef
    root: Path
    remote_url: str

    @property
    def project(self) -> Path:
        return self.root / self.run.project

    def env(self) -> dict[str, str]:
        bindir = str(Path(sys.executable).parent)
        return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
                "PYTHONPATH": os.pathsep.join([str(self.root), *filter(None, [os.environ.get("PYTHONPATH")])]),
                "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1"}

    def dvc(self, *args: str) -> str:
        """A DVC command in the model's folder; its stdout, or TransientError naming the failure."""
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=self.project, env=self.env(), text=True,
                              capture_output=True)
        if proc.returncode != 0:
            said = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
            raise TransientError(f"`dvc {' '.join(args[:2])}` failed: {said[-1] if said else proc.returncode}")
        return proc.stdout

    def stream(self, args: list[str], during: Callable[[], None] | None = None) -> tuple[int, list[str]]:
        """Run a command in the model's folder, its output streamed to the task log; (exit code, last lines).
        `during` is called every few seconds while it runs (checkpoint upload)."""
        proc = subprocess.Popen(args, cwd=self.project, env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        tail: deque[str] = deque(maxlen=80)
        done = threading.Event()
        watcher = None
        if during is not None:
            def watch() -> None:
                while not done.wait(2.0):
                    with contextlib.suppress(Exception):
                        during()
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
        for line in proc.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip())
        code = proc.wait()
        done.set()
        if watcher is not None:
            watcher.join()
        return code, list(tail)

    def commit(self, message: str, force: list[str] = ()) -> RunRef:
        """Commit what this task changed (dvc.lock, .dvc files, the run record, `force`d ignored files) to
        the run's ref; the next task starts from the returned RunRef."""
        sha = gitops.commit_all(self.root, message, [*force, "lineage/run.json"])
        gitops.push(self.root, self.shared.git_remote, sha, self.run.ref, expect=None)
        return replace(self.run, commit=sha)


def _write_dvc_config(root: Path, name: str, url: str, cache_dir: str) -> None:
    text = (f"[core]\n    remote = {name}\n[cache]\n    dir = {cache_dir}\n"
            f"['remote \"{name}\"']\n    url = {url}\n")
    (root / ".dvc" / "config.local").write_text(text, encoding="utf-8")


@contextlib.contextmanager
def task_space(shared: Shared, run: RunRef, start_ref: str | None = None, dvc: bool = True) -> Iterator[TaskSpace]:
    """A fresh checkout of the run's commit (or of `start_ref`'s tip for the run's first task)."""
    scratch = Path(shared.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"{run.model}-", dir=scratch))
    try:
        try:
            if start_ref:
                gitops.checkout(root, shared.git_remote, start_ref)
            else:
                gitops.checkout(root, shared.git_remote, run.ref, run.commit)
        except OSError as err:  # a full scratch disk, a vanished directory: worth a retry elsewhere
            raise TransientError(f"workspace {root}: {err}") from None
        if not (root / run.project / "params.yaml").is_file():
            raise ConfigError(f"model {run.model!r}: no {run.project}/params.yaml in the repository")
        url = ""
        if dvc:
            if not (root / ".dvc").is_dir():
                raise ConfigError("the repository has no .dvc directory (dvc init)")
            name, url = dvc_remote_url(shared, root)
            Path(shared.cache_dir).mkdir(parents=True, exist_ok=True)
            _write_dvc_config(root, name, url, str(Path(shared.cache_dir).resolve()))
        space = TaskSpace(shared, replace(run, commit=gitops.rev(root, "HEAD") or run.commit), root, url)
        yield space
    finally:
        shutil.rmtree(root, ignore_errors=True)


def stage_error(stage: str, code: int, tail: list[str]) -> Exception:
    """Map a failed `dvc repro` to the task outcome: the stage's own exit 1/2 are deterministic."""
    text = "\n".join(tail)
    exited = re.search(r"exited with (-?\d+)", text)
    stage_code = int(exited.group(1)) if exited else None
    said = [ln for ln in tail if ln.startswith("error:")]
    reason = said[-1].removeprefix("error:").strip() if said else (tail[-1] if tail else f"exit {code}")
    if stage_code == 1:
        return CheckFailed(f"{stage}: {reason}")
    if stage_code == 2 or any(phrase in text for phrase in DVC_CONFIG_ERRORS):
        return ConfigError(f"{stage}: {reason}")
    return TransientError(f"{stage}: {reason}")


# What DVC says when the model folder itself is wrong (a retry cannot help): fail at once.
DVC_CONFIG_ERRORS = ("are missing from", "failed to parse")
