"""Commit a lifecycle run's evidence to a git branch of its own, leaving the user's branch alone.

Inputs: the repository root, the branch name, the run's extra files (git-ignored reports included)
and a run record. Output: the new commit's sha on `refs/heads/<branch>`.
The commit's tree is the working tree as the run saw it (tracked and new non-ignored files, so
uncommitted code changes are recorded too) plus `dvc.lock`, `params.yaml`, the raw data's `.dvc`
file, the reports and `lineage/run.json`. Its parents are the branch's previous tip and, when not
already in its history, the user's HEAD, so `git log lineage`, `dvc params diff`, `dvc metrics diff`
and `dvc dag` work on it with the standard tools. HEAD, the index and the working tree are never
touched (a temporary index, `commit-tree`, then a compare-and-swap `update-ref`).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from pipelines.core.errors import ConfigError

ZERO = "0" * 40


def _git(root: Path, *args: str, env: dict | None = None, input_: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=root, env=env, input=input_, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args[:2])} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout.strip()


def _rev(root: Path, ref: str) -> str | None:
    out = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    return out or None


def _is_ancestor(root: Path, commit: str, of: str) -> bool:
    return subprocess.run(["git", "merge-base", "--is-ancestor", commit, of], cwd=root).returncode == 0


def commit_run(root: Path, branch: str, files: list[str], record: dict[str, Any], message: str) -> str:
    """Commit the run to `branch`; return the commit sha."""
    root = Path(root)
    if _git(root, "rev-parse", "--is-inside-work-tree", check=False) != "true":
        raise ConfigError(f"{root} is not a git repository: the lineage branch needs one (git init)")
    with tempfile.TemporaryDirectory(prefix="lineage-index-") as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index"),
               "GIT_AUTHOR_NAME": str(record.get("triggered_by") or "pipelines"),
               "GIT_AUTHOR_EMAIL": "lifecycle@pipelines.local",
               "GIT_COMMITTER_NAME": "pipelines lifecycle", "GIT_COMMITTER_EMAIL": "lifecycle@pipelines.local"}
        head = _rev(root, "HEAD")
        if head:
            _git(root, "read-tree", head, env=env)
        _git(root, "add", "-A", "--", ".", env=env)
        present = [f for f in files if (root / f).exists()]
        if present:
            _git(root, "add", "-f", "--", *present, env=env)
        blob = _git(root, "hash-object", "-w", "--stdin", env=env,
                    input_=json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        _git(root, "update-index", "--add", "--cacheinfo", f"100644,{blob},lineage/run.json", env=env)
        tree = _git(root, "write-tree", env=env)
        tip = _rev(root, f"refs/heads/{branch}")
        parents = [tip] if tip else []
        if head and (not tip or not _is_ancestor(root, head, tip)):
            parents.append(head)
        args = ["commit-tree", tree] + [a for p in parents for a in ("-p", p)]
        commit = _git(root, *args, env=env, input_=message + "\n")
        _git(root, "update-ref", f"refs/heads/{branch}", commit, tip or ZERO, env=env)
    return commit
