"""Lineage commits go to their own branch: HEAD, the index and the working tree stay as they were."""
from __future__ import annotations

import json
import subprocess

import pytest

from pipelines.core.errors import ConfigError
from pipelines.registry.evidence_branch import commit_run

ID = ["-c", "user.name=t", "-c", "user.email=t@example.com"]


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / ".gitignore").write_text("reports/\n")
    (tmp_path / "code.py").write_text("print(1)\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, *ID, "commit", "-qm", "code")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics.json").write_text('{"acc": 0.9}')
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "code.py").write_text("print(2)\n")  # an uncommitted edit: recorded as it ran
    git(tmp_path, "add", "code.py")  # staged, to check the user's index is left alone
    return tmp_path


def test_commit_goes_to_the_branch_only(repo):
    head, status, index = git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain"), git(repo, "diff", "--cached")
    first = commit_run(repo, "lineage", ["reports/metrics.json", "dvc.lock", "missing.json"], {"run_id": "r1"}, "run 1")
    assert git(repo, "rev-parse", "HEAD") == head and git(repo, "status", "--porcelain") == status
    assert git(repo, "diff", "--cached") == index and git(repo, "branch", "--show-current") == "main"
    assert git(repo, "show", f"{first}:reports/metrics.json") == '{"acc": 0.9}'
    assert git(repo, "show", f"{first}:code.py") == "print(2)"
    assert json.loads(git(repo, "show", f"{first}:lineage/run.json")) == {"run_id": "r1"}
    assert git(repo, "rev-list", "--parents", "-n1", first).split()[1:] == [head]
    second = commit_run(repo, "lineage", ["dvc.lock"], {"run_id": "r2"}, "run 2")
    assert git(repo, "rev-list", "--parents", "-n1", second).split()[1:] == [first]  # HEAD already in history
    assert git(repo, "rev-parse", "lineage") == second


def test_not_a_git_repository(tmp_path):
    with pytest.raises(ConfigError, match="not a git repository"):
        commit_run(tmp_path, "lineage", [], {}, "x")
