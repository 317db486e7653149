"""A lifecycle run against a registry whose ledger must be signed (registry.trusted_keys): the
promoting tasks sign with the key from their environment, `pipelines lineage` and `registry verify`
check every signature, a ledger rewritten without the key is named, and a worker without the key
cannot promote."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipelines.devtools import airflow_local
from pipelines.registry import signing
from pipelines.registry import store as registry
from tests.conftest import cli_env
from tests.lifecycle_support import airflow_env, last_record, make_project, sh

pytestmark = pytest.mark.integration
DAG = "lifecycle__text-classifier"
PEM = signing.new_key_pem()
PUBLIC = signing.public_key(signing.load_key(PEM, "test"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = make_project(tmp_path_factory.mktemp("signed"), registry={"trusted_keys": [PUBLIC]})
    airflow_local.setup(repo)
    return repo


def run(repo, key: bytes | None, conf: dict | None = None):
    env = airflow_env(repo, **({"PIPELINES_REGISTRY_SIGNING_KEY": key.decode()} if key else {}))
    env.pop("PIPELINES_REGISTRY_SIGNING_KEY", None) if key is None else None
    return sh(Path(sys.executable).parent / "airflow", "dags", "test", DAG, "-c", json.dumps(conf or {}), cwd=repo,
              check=False, env=env)


def lineage(repo, *args):
    return sh(sys.executable, "-m", "pipelines", "--model", "text-classifier", "lineage", *args, cwd=repo,
              check=False, env={**cli_env(), "HF_HUB_OFFLINE": "1"})


def ledger_path(repo) -> Path:
    return repo / "registry" / "text-classifier" / registry.LEDGER


def test_the_promoting_tasks_sign_and_lineage_checks_every_signature(repo):
    proc = run(repo, PEM)
    assert proc.returncode == 0, proc.stdout[-3000:]
    entries = [json.loads(line) for line in ledger_path(repo).read_text().splitlines()]
    assert [e["action"] for e in entries] == ["init", "promote", "lineage"]
    assert all(e["signature"]["key"] == PUBLIC for e in entries)
    assert json.loads(lineage(repo, "--json").stdout)["verified"] is True
    run_json = json.loads(sh("git", "show", "lineage:lineage/run.json", cwd=repo).stdout)
    assert run_json["ledger_head"]["seq"] == 2  # the head it saw, kept in git


def test_a_worker_without_the_key_cannot_promote_and_nothing_is_written(repo):
    before = ledger_path(repo).read_bytes()
    proc = run(repo, None, {"epochs": 3})
    assert proc.returncode != 0
    assert "writing to it needs the signing key" in proc.stdout + proc.stderr
    assert ledger_path(repo).read_bytes() == before
    assert "writing to it needs the signing key" in last_record(repo).get("note", "")


def test_a_ledger_rewritten_without_the_key_is_named(repo):
    path, head = ledger_path(repo), ledger_path(repo).with_name(registry.HEAD)
    saved = path.read_bytes(), head.read_bytes()
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    entries[1]["by"] = "mallory"  # who promoted v1; every hash and the head recomputed, signatures kept
    prev = registry.GENESIS
    for e in entries:
        e["prev_hash"], e["hash"] = prev, None
        e["hash"] = prev = registry.entry_hash(e)
    try:
        path.write_bytes(b"".join(registry._canonical(e) + b"\n" for e in entries))
        head.write_bytes(registry._canonical({"seq": len(entries), "hash": prev}))
        out = lineage(repo)
        assert out.returncode == 1 and "ledger line 2 (promote): signature does not match the entry" in out.stderr
        verify = sh(sys.executable, "-m", "pipelines", "--model", "text-classifier", "registry", "verify", cwd=repo,
                    check=False, env=cli_env())
        assert verify.returncode != 0 and "signature does not match" in verify.stdout + verify.stderr
    finally:
        path.write_bytes(saved[0])
        head.write_bytes(saved[1])
    assert json.loads(lineage(repo, "--json").stdout)["verified"] is True
