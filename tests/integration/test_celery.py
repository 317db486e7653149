"""The lifecycle on a real distributed Airflow: CeleryExecutor, PostgreSQL metadata DB, Redis broker,
and two Celery workers that share no disk with each other or with the user's checkout (each its own
working directory, AIRFLOW_HOME, DVC cache and scratch; only the git remote, the DVC remote and the
registry are shared). `train` goes to the `gpu` queue, which only the second worker serves.

1. Both models' lifecycles triggered at once through the REST API: both succeed, each task ran on the
   worker its queue names, the user's checkout is untouched, the registry holds both champions and
   each champion's lineage verifies.
2. The `gpu` worker is SIGKILLed in the middle of `train`; a replacement worker on a third "machine"
   takes the retry, resumes from the checkpoint pushed to shared storage, and the run ends with the
   metrics an uninterrupted training gives.
"""
from __future__ import annotations

import json
import time

import pytest

from pipelines.orchestration import records
from pipelines.orchestration.runspace import RunRef, Shared, task_space
from tests.celery_support import celery_cluster
from tests.lifecycle_support import make_project, pipelines, user_state
from tests.services_support import require_servers

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STAGE_TASKS = ["snapshot", "validate", "prepare", "train", "evaluate", "gate", "promote", "lineage"]


# The two classifiers: CI-sized, they train in seconds (the generative model's SmolLM2 would take minutes).
MODELS = ("text-classifier", "it-helpdesk")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_servers()
    tmp = tmp_path_factory.mktemp("celery")
    repo = make_project(tmp, models=MODELS)
    with celery_cluster(tmp, repo, list(MODELS)) as c:
        yield c


def test_two_models_run_at_once_each_task_where_its_queue_says(cluster):
    c = cluster
    before = user_state(c.repo)
    runs = {m: c.trigger(f"lifecycle__{m}", {}) for m in MODELS}  # both at once
    for model, run_id in runs.items():
        c.wait_run(f"lifecycle__{model}", run_id)
    started = {m: c.api("GET", f"/dags/lifecycle__{m}/dagRuns/{r}").json() for m, r in runs.items()}
    a, b = started.values()
    assert a["start_date"] < b["end_date"] and b["start_date"] < a["end_date"], "the two runs did not overlap"
    for model, run_id in runs.items():
        dag_id = f"lifecycle__{model}"
        where = {t: c.xcom(dag_id, run_id, t)["worker"] for t in STAGE_TASKS}
        assert where == {t: "gpu-worker" if t == "train" else "cpu-worker" for t in STAGE_TASKS}, where
        assert c.task(dag_id, run_id, "train")["queue"] == "gpu"
        record = records.read(str(c.repo), model, run_id)
        assert record["promotion"] == {"model": model, "version": 1, "changed": True, "registered": True,
                                       "approved_by": None}
        chain = json.loads(pipelines(c.repo, "--model", model, "lineage", "--json").stdout)
        assert chain["verified"] is True and chain["links"][-1]["run_id"] == run_id
    assert user_state(c.repo) == before  # no task wrote into the user's checkout
    assert {p.name for p in (c.repo / "registry").iterdir() if p.is_dir()} == set(MODELS)
    for machine in ("cpu-worker", "gpu-worker"):  # workspaces are disposable; each machine kept its own cache
        assert not any((c.tmp / machine / "scratch").iterdir())
        assert any((c.tmp / machine / "dvc-cache").rglob("*"))


def test_a_killed_gpu_worker_is_replaced_and_training_resumes_from_the_shared_checkpoint(cluster):
    c = cluster
    model, dag_id = "text-classifier", "lifecycle__text-classifier"
    run_id = c.trigger(dag_id, {"epochs": 6})
    store = c.repo / ".dvc-storage" / "pipelines-checkpoints" / model
    deadline = time.monotonic() + 600
    while not list(store.glob("*/step-*")):
        assert time.monotonic() < deadline, f"no checkpoint reached shared storage:\n{c.logs()}"
        time.sleep(1)
    assert c.task(dag_id, run_id, "train")["state"] == "running"
    c.kill("gpu-worker")  # the machine is gone, mid-train, with its disk
    c.worker("gpu-replacement", "gpu")
    c.wait_run(dag_id, run_id, seconds=1200)
    train = c.task(dag_id, run_id, "train")
    assert train["try_number"] >= 2
    out = c.xcom(dag_id, run_id, "train")
    assert out["worker"] == "gpu-replacement" and out["ran"] is True
    logs = "".join(p.read_text() for p in (c.tmp / "gpu-replacement" / "logs").rglob("*.log"))
    assert "resuming from shared checkpoints" in logs and "resuming from " in logs
    assert not store.exists() or not list(store.glob("*/step-*"))  # cleared after the successful train
    # the same training, uninterrupted, in a fresh checkout of the run: the same metrics
    shared = Shared(str(c.repo), str(c.tmp / "auditor" / "cache"), str(c.tmp / "auditor" / "scratch"))
    with task_space(shared, RunRef.of(out)) as ws:
        ws.dvc("pull", "data/prepared", "reports/train/metrics.json")
        resumed = json.loads((ws.project / "reports" / "train" / "metrics.json").read_text())
        ws.dvc("repro", "--force", "--single-item", "train")
        straight = json.loads((ws.project / "reports" / "train" / "metrics.json").read_text())
    assert resumed["steps"] == straight["steps"]
    for key in ("eval_loss", "eval_accuracy", "final_train_loss"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-4, abs=1e-6), key
    assert records.read(str(c.repo), model, run_id)["promotion"]["changed"] in (True, False)
