"""The registry's heads kept in git, where write access to the registry's storage does not reach.

Inputs: a git repository the process can read (and, to write, update refs in), optionally the shared
git remote the workers push to; the registry's location and model; a ledger head (seq, hash).
Outputs: `GitAnchor.record` commits the head as `head.json` on `refs/registry/<model>/<where>`
(`<where>`: 16 hex of the sha256 of the registry's location, so a scratch registry never meets the
real one's history) and pushes it with a lease; `GitAnchor.read` returns the newest head recorded.

Every registry write records its head (`store._append`), and every reader (`store.read_ledger`)
checks that the ledger still holds that head: a ledger cut short or rewritten since — by someone who
can write the storage, or by a signing key's holder who cut it back to before the rotation that
retired the key — disagrees with git. Only plumbing is used (`hash-object`, `mktree`, `commit-tree`,
`update-ref`): no branch, index or working tree is touched. A reader without the repository (a
server in a pod without git) checks chain and signatures only; the README says so.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.core.errors import CheckFailed

_IDENTITY = {"GIT_AUTHOR_NAME": "pipelines registry", "GIT_AUTHOR_EMAIL": "registry@pipelines.local",
             "GIT_COMMITTER_NAME": "pipelines registry", "GIT_COMMITTER_EMAIL": "registry@pipelines.local",
             "GIT_TERMINAL_PROMPT": "0"}


def _git(repo: Path, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=repo, input=data, capture_output=True, timeout=60,
                              env={**os.environ, **_IDENTITY})
    except (OSError, subprocess.TimeoutExpired) as err:
        return subprocess.CompletedProcess(args, 1, b"", str(err).encode())


def _out(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.decode("utf-8", "replace").strip()


def ref_name(model: str, location: str) -> str:
    return f"refs/registry/{model}/{hashlib.sha256(location.encode('utf-8')).hexdigest()[:16]}"


@dataclass(frozen=True)
class GitAnchor:
    repo: Path                  # a git repository (a checkout or bare) holding refs/registry/...
    remote: str | None = None   # also push there (a worker's disposable checkout: the shared remote)

    @classmethod
    def of_folder(cls, folder: Path | None) -> "GitAnchor | None":
        """The anchor of the git checkout `folder` lies in (None outside git: no anchor to check)."""
        if folder is None:
            return None
        top = _git(Path(folder), "rev-parse", "--show-toplevel")
        return cls(Path(_out(top))) if top.returncode == 0 and _out(top) else None

    def fetch(self, model: str, location: str) -> None:
        """Bring the remote's anchor into `repo` (a worker reads what every earlier writer recorded)."""
        if self.remote:
            ref = ref_name(model, location)
            _git(self.repo, "fetch", "--quiet", "--no-tags", self.remote, f"+{ref}:{ref}")

    def read(self, model: str, location: str) -> dict[str, Any] | None:
        proc = _git(self.repo, "cat-file", "blob", f"{ref_name(model, location)}:head.json")
        if proc.returncode != 0:
            return None
        try:
            head = json.loads(proc.stdout)
        except ValueError:
            raise CheckFailed(f"the registry head kept in git ({ref_name(model, location)}) is malformed") from None
        if not (isinstance(head, dict) and isinstance(head.get("seq"), int) and isinstance(head.get("hash"), str)):
            raise CheckFailed(f"the registry head kept in git ({ref_name(model, location)}) is malformed")
        return head

    def record(self, model: str, location: str, head: dict[str, Any], action: str) -> str | None:
        """Commit `head` on the anchor ref (and push it); None, or a warning saying why it could not."""
        ref = ref_name(model, location)
        for _ in range(5):
            self.fetch(model, location)
            parent = _out(_git(self.repo, "rev-parse", "--verify", "--quiet", ref)) or None
            message = f"registry {model}: {action} (ledger entry {head['seq']})\n\n{location}"
            commit = self._commit(head, parent, message)
            if commit is None:
                return f"could not write the registry head to git in {self.repo}"
            moved = _git(self.repo, "update-ref", ref, commit, parent or "0" * 40)
            if moved.returncode != 0:
                continue  # another writer moved it between our read and our update: read again
            if not self.remote:
                return None
            lease = f"--force-with-lease={ref}:{parent or ''}"
            pushed = _git(self.repo, "push", "--quiet", lease, self.remote, f"{commit}:{ref}")
            if pushed.returncode == 0:
                return None
        return f"could not record the registry head in git ({ref}): the ref kept moving or the push failed"

    def _commit(self, head: dict[str, Any], parent: str | None, message: str) -> str | None:
        blob = _git(self.repo, "hash-object", "-w", "--stdin",
                    data=json.dumps(head, sort_keys=True).encode("utf-8") + b"\n")
        if blob.returncode != 0:
            return None
        tree = _git(self.repo, "mktree", data=f"100644 blob {_out(blob)}\thead.json\n".encode())
        if tree.returncode != 0:
            return None
        commit = _git(self.repo, "commit-tree", _out(tree), *(["-p", parent] if parent else []), "-m", message)
        return _out(commit) if commit.returncode == 0 else None

