"""The git operations a task needs, against any remote git understands (a path or a URL).

Inputs: a local repository directory and the remote. Outputs: commits and refs. Failures of the
remote (unreachable, refused push) raise `TransientError` naming the command (Airflow retries);
a missing run commit raises `InputError` (retrying cannot bring it back).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pipelines.core.errors import InputError

IDENTITY = {"GIT_AUTHOR_NAME": "pipelines lifecycle", "GIT_AUTHOR_EMAIL": "lifecycle@pipelines.local",
            "GIT_COMMITTER_NAME": "pipelines lifecycle", "GIT_COMMITTER_EMAIL": "lifecycle@pipelines.local",
            "GIT_TERMINAL_PROMPT": "0"}


class TransientError(RuntimeError):
    """A failure worth retrying (a killed process, an unreachable remote, a full disk freed later)."""


def git(cwd: Path, *args: str, input_: str | None = None, check: bool = True, author: str | None = None) -> str:
    env = {**os.environ, **IDENTITY, **({"GIT_AUTHOR_NAME": author} if author else {})}
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, input=input_, capture_output=True, text=True)
    if check and proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise TransientError(f"`git {' '.join(args[:2])}` failed: {said[-1] if said else proc.returncode}")
    return proc.stdout.strip()


def rev(cwd: Path, ref: str) -> str | None:
    return git(cwd, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False) or None


def is_ancestor(cwd: Path, ancestor: str, commit: str) -> bool:
    proc = subprocess.run(["git", "merge-base", "--is-ancestor", ancestor, commit], cwd=cwd, capture_output=True)
    return proc.returncode == 0


def tip(remote: str, ref: str) -> str | None:
    """The sha `ref` points at in `remote`, or None if it has no such ref."""
    import tempfile

    listed = git(Path(tempfile.gettempdir()), "ls-remote", "--", remote, ref)
    return listed.split()[0] if listed else None


def fetch(cwd: Path, remote: str, ref: str, into: str | None = None) -> str | None:
    """Fetch `ref` from `remote` (into the local ref `into`, or FETCH_HEAD); its sha, or None if absent."""
    sha = tip(remote, ref)
    if sha is None:
        return None
    git(cwd, "fetch", "--quiet", "--no-tags", remote, f"+{ref}:{into}" if into else ref)
    return sha


def checkout(directory: Path, remote: str, ref: str, commit: str | None = None) -> str:
    """Make `directory` a checkout of `commit` (default: the tip of `ref`) from `remote`; return the sha."""
    directory.mkdir(parents=True, exist_ok=True)
    git(directory, "init", "--quiet")
    tip = fetch(directory, remote, ref)
    if tip is None:
        raise InputError(f"the git remote {remote} has no {ref}")
    target = commit or tip
    if rev(directory, target) is None:
        raise InputError(f"commit {target[:12]} is not on {ref} of {remote}")
    git(directory, "checkout", "--quiet", "--detach", target)
    return rev(directory, "HEAD") or target


def commit_all(directory: Path, message: str, force: list[str], author: str | None = None) -> str:
    """Commit every change in the checkout, plus the git-ignored files in `force`; return HEAD's sha."""
    git(directory, "add", "-A")
    present = [p for p in force if (directory / p).exists()]
    if present:
        git(directory, "add", "-f", "--", *present)
    git(directory, "commit", "--quiet", "--allow-empty", "-m", message, author=author)
    return git(directory, "rev-parse", "HEAD")


def push(directory: Path, remote: str, commit: str, ref: str, expect: str | None = "") -> bool:
    """Point `ref` of `remote` at `commit`. `expect`: the tip it must still have ("" = absent, None =
    whatever it is). False when the remote moved since (the caller re-reads and tries again)."""
    # With a lease the refspec must not carry "+": that would force past the lease.
    lease, spec = ([], f"+{commit}:{ref}") if expect is None else ([f"--force-with-lease={ref}:{expect}"], f"{commit}:{ref}")
    env_args = ["push", "--quiet", "--porcelain", *lease, remote, spec]
    out = subprocess.run(["git", *env_args], cwd=directory, env={**os.environ, **IDENTITY}, capture_output=True,
                         text=True)
    if out.returncode == 0:
        return True
    said = out.stdout + out.stderr
    lost_race = ("stale info", "[rejected]", "failed to update ref", "cannot lock ref", "incorrect old value")
    if any(sign in said for sign in lost_race):  # the remote moved under us: the caller re-reads and retries
        return False
    lines = [ln for ln in said.strip().splitlines() if ln.strip() and not ln.startswith(("To ", "Done"))]
    raise TransientError(f"`git push {ref}` to {remote} failed: {lines[0] if lines else out.returncode}")


def show(cwd: Path, remote: str, ref: str, path: str) -> bytes | None:
    """The bytes of `path` at the tip of `ref` in `remote` (a local repository is read in place)."""
    local = Path(remote)
    if local.is_dir():
        proc = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=local, capture_output=True)
        return proc.stdout if proc.returncode == 0 else None
    if fetch(cwd, remote, ref) is None:
        return None
    proc = subprocess.run(["git", "show", f"FETCH_HEAD:{path}"], cwd=cwd, capture_output=True)
    return proc.stdout if proc.returncode == 0 else None


def refs(remote: str, prefix: str) -> dict[str, str]:
    """ref name -> sha of every ref of `remote` under `prefix`."""
    out = git(Path.cwd() if not Path(remote).is_dir() else Path(remote), "ls-remote", "--", remote, f"{prefix}*")
    return {name: sha for sha, name in (line.split("\t") for line in out.splitlines() if "\t" in line)}
