"""The real model_lifecycle / rollback DAGs under `airflow dags test` (SQLite) on a throw-away copy
of the project: promotion, lineage branch and verified chain, a challenger on a new drop with form
params, a gate rejection with reasons, a deterministic failure that is not retried, a rollback,
bad form values refused, and tampering named by `pipelines lineage`."""
from __future__ import annotations

import json

import pytest
import yaml

from pipelines import airflow_local
from tests.lifecycle_support import dags_test, last_record, make_project, pipelines, sh

pytestmark = pytest.mark.integration
STAGES = {"validate", "prepare", "train", "evaluate", "gate"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = make_project(tmp_path_factory.mktemp("lifecycle"))
    airflow_local.setup(repo)
    return repo


def ledger(repo):
    return (repo / "registry" / "text-classifier" / "ledger.jsonl").read_text()


def champion(repo) -> int:
    return json.loads(ledger(repo).splitlines()[-1])["aliases"]["champion"]


def git(repo, *args) -> str:
    return sh("git", *args, cwd=repo).stdout.strip()


def test_first_run_promotes_and_leaves_a_verified_lineage(repo):
    head, params_before = git(repo, "rev-parse", "HEAD"), (repo / "params.yaml").read_bytes()
    proc = dags_test(repo, "model_lifecycle")
    assert proc.returncode == 0, proc.stdout[-4000:]
    record = last_record(repo)
    assert record["gate"]["passed"] and record["promotion"] == {
        "model": "text-classifier", "version": 1, "changed": True, "approved_by": None}
    assert set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"]) == STAGES
    # the user's branch, index and params are untouched; the evidence is on the lineage branch
    assert git(repo, "rev-parse", "HEAD") == head and (repo / "params.yaml").read_bytes() == params_before
    assert git(repo, "rev-parse", "lineage") == record["lineage_commit"]
    committed = git(repo, "show", "--name-only", "--format=", "lineage").split()
    assert {"dvc.lock", "data/raw.dvc", "reports/gate/decision.json", "lineage/run.json"} <= set(committed)
    assert list((repo / ".dvc-storage" / "files" / "md5").iterdir()), "dvc push put nothing in the remote"
    chain = json.loads(pipelines(repo, "lineage", "--json").stdout)
    assert chain["verified"] is True and chain["version"] == 1
    orchestration = chain["links"][-1]
    assert orchestration["dag_id"] == "model_lifecycle" and orchestration["run_id"] == record["run_id"]
    assert [link["step"] for link in chain["links"]] == ["registry", "gate", "evaluation", "training", "prepared",
                                                         "validation", "raw", "evidence_branch", "orchestration"]
    assert chain["links"][-2]["status"] == "ok" and chain["links"][-2]["commit"] == record["lineage_commit"]


def test_new_drop_with_form_params_trains_a_challenger(repo):
    pipelines(repo, "sample", "--out", "data/raw", "--rows", "300", "--seed", "1")
    proc = dags_test(repo, "model_lifecycle", {"epochs": 3, "lora_rank": 8, "learning_rate": 0.003})
    assert proc.returncode == 0, proc.stdout[-4000:]
    record = last_record(repo)
    assert record["snapshot"]["overrides"]["train"] == {"epochs": 3, "learning_rate": 0.003,
                                                        "lora": {"r": 8, "alpha": 16.0, "dropout": 0.05,
                                                                 "target_modules": None}}
    assert len(record["snapshot"]["files"]) == 2 and record["gate"]["champion_version"] == 1
    assert record["promotion"]["version"] == 2 and champion(repo) == 2
    # the run's values were in params.yaml while it ran (dvc.lock and the lineage commit say so), then restored
    assert yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train"]["params"]["params.yaml"]["train"]["epochs"] == 3
    assert yaml.safe_load(git(repo, "show", "lineage:params.yaml"))["train"]["epochs"] == 3
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["epochs"] == 2
    assert git(repo, "rev-list", "--count", "lineage") == "3"  # project commit + two runs
    diff = sh("dvc", "params", "diff", "lineage~1", "lineage", cwd=repo).stdout
    assert "train.epochs" in diff


def test_gate_rejection_ends_the_run_without_promotion_and_says_why(repo):
    before = ledger(repo)
    proc = dags_test(repo, "model_lifecycle", {"epochs": 3, "lora_rank": 8, "learning_rate": 0.003,
                                               "min_accuracy": 0.999})
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "GATE REJECTED" in proc.stdout and "min_accuracy" in proc.stdout
    assert "Stage 'train' didn't change, skipping" in proc.stdout  # same data and params: DVC skips training
    assert "is already champion v2 and was evaluated; only the registry changed since: evaluate skipped" in proc.stdout
    record = last_record(repo)
    assert record["gate"]["passed"] is False and "promotion" not in record
    assert record["note"].startswith("gate rejected candidate") and "min_accuracy" in record["note"]
    assert ledger(repo) == before
    assert json.loads(git(repo, "show", "lineage:lineage/run.json"))["gate"]["passed"] is False


def test_invalid_data_fails_at_once_and_stores_nothing(repo):
    before = ledger(repo)
    bad = repo / "data" / "raw" / "drop-0007-faulty.csv"
    pipelines(repo, "sample", "--out", "data/raw", "--rows", "200", "--seed", "7", "--faulty")
    try:
        proc = dags_test(repo, "model_lifecycle")
    finally:
        bad.unlink()
    assert proc.returncode != 0
    assert "validate failed (not retried)" in proc.stdout
    record = last_record(repo)
    assert record["failed"]["task"] == "validate" and record["note"].startswith("stopped at validate")
    assert ledger(repo) == before and champion(repo) == 2


@pytest.mark.parametrize("conf, field", [({"epochs": 999}, "epochs"), ({"dataset": "../../etc"}, "dataset"),
                                         ({"min_accuracy": 0.1}, "min_accuracy")])
def test_form_values_out_of_bounds_are_refused_before_the_run(repo, conf, field):
    before = ledger(repo)
    proc = dags_test(repo, "model_lifecycle", conf)
    assert proc.returncode != 0
    assert field in (proc.stdout + proc.stderr) and "Invalid input for param" in (proc.stdout + proc.stderr)
    assert ledger(repo) == before


def test_rollback_dag_moves_champion_back_with_the_reason(repo):
    proc = dags_test(repo, "rollback", {"reason": "v2 misroutes card refunds"})
    assert proc.returncode == 0, proc.stdout[-4000:]
    last = json.loads(ledger(repo).splitlines()[-1])
    assert last["action"] == "rollback" and last["aliases"]["champion"] == 1
    assert last["reason"] == "v2 misroutes card refunds" and last["run"].startswith("rollback run")
    assert dags_test(repo, "rollback", {}).returncode != 0  # the reason is required


@pytest.mark.parametrize("args, message", [(["--alias", "staging"], "alias 'staging' is not set"),
                                           (["--version", "99"], "no registered version 99")])
def test_lineage_of_something_that_is_not_there(repo, args, message):
    proc = pipelines(repo, "lineage", *args, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {message}") and proc.stderr.count("\n") == 1


def test_lineage_names_altered_raw_data(repo):
    chain = json.loads(pipelines(repo, "lineage", "--json").stdout)
    raw = next(link for link in chain["links"] if link["step"] == "raw")
    obj = repo / ".dvc" / "cache" / "files" / "md5" / raw["files"][0]["md5"][:2] / raw["files"][0]["md5"][2:]
    obj.chmod(0o644)
    original = obj.read_bytes()
    obj.write_bytes(original[:-2] + b"x\n")
    try:
        proc = pipelines(repo, "lineage", "--json", check=False)
        assert proc.returncode == 1
        assert json.loads(proc.stdout)["verified"] is False
        assert "raw altered" in proc.stderr and proc.stderr.count("\n") == 1
    finally:
        obj.write_bytes(original)
    assert pipelines(repo, "lineage").returncode == 0
