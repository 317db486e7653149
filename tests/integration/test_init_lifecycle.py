"""Bring your own data in one command, end to end: `pipelines init` on banking77 (a user's CSV, from
../shared/data), one run of the DAG `lifecycle__<name>` that appears for the new folder, and its champion
served and answering."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from pipelines.core.config import load_params
from pipelines.devtools import airflow_local
from pipelines.serving.app import create_app
from tests.lifecycle_support import GIT_ID, ci_sized, dags_test, last_record, make_project, pipelines, sh

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_init_on_banking77_then_one_lifecycle_run_serves_its_champion(tmp_path, banking77):
    repo = make_project(tmp_path)
    frame = pd.read_csv(banking77)
    intents = sorted(frame["category"].unique())[:6]  # CI-sized: six intents, every row of each
    frame[frame["category"].isin(intents)].to_csv(tmp_path / "banking77.csv", index=False)

    out = pipelines(repo, "init", "banking", "--data", tmp_path / "banking77.csv")
    assert "label column 'category' (inferred: its name)" in out.stderr
    assert "airflow dags trigger lifecycle__banking" in out.stdout
    folder = repo / "projects" / "banking"
    holdout = pd.read_csv(folder / "golden" / "holdout.csv")
    assert sorted(holdout["category"].unique()) == intents
    ci_sized(repo, "banking")  # the test's own training budget; everything else is what init wrote
    sh("git", "add", "projects/banking", cwd=repo)
    sh("git", *GIT_ID, "commit", "-qm", "Add the banking model", cwd=repo)

    airflow_local.setup(repo)
    run = dags_test(repo, "lifecycle__banking")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    record = last_record(repo, "banking")
    assert record["promotion"]["registered"] is True and record["promotion"]["version"] == 1, record
    chain = json.loads(pipelines(repo, "--model", "banking", "lineage", "--json").stdout)
    assert chain["verified"] is True

    params = load_params(folder / "params.yaml")
    app = create_app(params, poll=False, models={"banking": params}, folders={"banking": folder})
    with TestClient(app) as client:
        r = client.post("/v1/classify", json={"model": "banking", "texts": list(holdout["text"][:20])})
    assert r.status_code == 200, r.text
    body = r.json()
    answered = [p["label"] for p in body["results"]]
    assert body["model_version"] == 1 and set(answered) <= set(intents)
    assert sum(a == b for a, b in zip(answered, holdout["category"][:20])) >= 10  # it learned, not guessed
