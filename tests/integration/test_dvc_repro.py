"""`dvc repro` by hand in a model folder of a temporary copy of the platform: first run, no-op, one
param change, a pinned champion, then a queued sweep (`dvc exp run --queue`) read back by `dvc exp
show`, `dvc metrics diff` and `dvc plots diff` from DVCLive's files; the stages' code is the
repository's `pipelines` package."""
import json
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from pipelines.devtools import airflow_local
from tests.conftest import ROOT, cli_env


def sh(*args, cwd, check=True):
    proc = subprocess.run(list(args), cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(*args, cwd, check=True):
    return sh(sys.executable, "-m", "dvc", *args, cwd=cwd, check=check)


@pytest.fixture
def project(tmp_path):
    repo = tmp_path / "platform"
    folder = repo / "projects" / "text-classifier"
    folder.mkdir(parents=True)
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")
    shutil.copy(ROOT / "projects" / "text-classifier" / "dvc.yaml", folder / "dvc.yaml")
    shutil.copytree(ROOT / "projects" / "text-classifier" / "golden", folder / "golden")  # the reviewed holdout
    params = yaml.safe_load((ROOT / "projects" / "text-classifier" / "params.yaml").read_text())
    params["train"].update(max_steps=3, max_length=32, checkpoint_every=2)  # CI-sized training
    params["evaluate"].update(latency_samples=5)
    # 3 training steps make a weak model: this test is about DVC mechanics, so floors are off
    params["gate"].update(min_accuracy=None, min_macro_f1=None, min_class_recall=None, max_p95_latency_ms=None,
                          max_latency_ratio=None)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(ROOT / "pipelines", repo / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy(ROOT / ".dvc" / name, repo / ".dvc" / name)
    airflow_local.registry_keys(repo)  # the signed registry's key pair (params name it)
    sh("git", "init", "-q", cwd=repo)
    sh(sys.executable, "-m", "pipelines", "sample", "--out", "data/raw", "--rows", "600", cwd=folder)
    dvc("add", "-q", "data/raw", cwd=folder)
    sh(sys.executable, "-m", "pipelines", "registry", "init", cwd=folder)
    return folder


ALL = {"validate", "prepare", "train", "evaluate", "gate"}


def ran(proc) -> set[str]:
    return {ln.split("'")[1] for ln in proc.stdout.splitlines() if ln.startswith("Running stage")}


def test_repro_first_run_noop_param_change_pinned_champion_and_a_queued_sweep(project):
    first = dvc("repro", cwd=project)
    assert ran(first) == ALL
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == ALL
    model_out = next(o for o in lock["stages"]["train"]["outs"] if o["path"] == "models/candidate")
    assert model_out["md5"].endswith(".dir")
    assert (project / "models" / "candidate" / "adapter" / "adapter_model.safetensors").exists()
    assert "loss" in dvc("plots", "show", "--json", cwd=project).stdout
    raw_dep = next(d for d in lock["stages"]["validate"]["deps"] if d["path"] == "data/raw")
    assert raw_dep["md5"].endswith(".dir")
    prepared = next(o for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared")
    assert prepared["nfiles"] == 7  # 3 splits, label map, 2 data cards, the stage's output marker
    train = project / "data" / "prepared" / "train.parquet"
    mtime = train.stat().st_mtime_ns

    again = dvc("repro", cwd=project)
    assert ran(again) == set()
    assert "Data and pipelines are up to date" in again.stdout
    assert train.stat().st_mtime_ns == mtime

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["prepare"]["seed"] = 7
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = dvc("repro", cwd=project)
    assert ran(changed) == ALL - {"validate"}  # a new split is new training and test data
    assert "Stage 'validate' didn't change, skipping" in changed.stdout
    lock2 = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock2["stages"]["prepare"]["params"]["params.yaml"]["prepare"]["seed"] == 7
    assert lock2["stages"]["validate"] == lock["stages"]["validate"]

    params["train"]["learning_rate"] = 0.001
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(dvc("repro", cwd=project)) == {"train", "evaluate", "gate"}

    dvc("push", "-q", cwd=project)
    assert any((project.parents[1] / ".dvc-storage" / "files" / "md5").rglob("*"))
    assert dvc("status", cwd=project).stdout.strip() == "Data and pipelines are up to date."
    assert "candidate" in dvc("metrics", "show", "--json", cwd=project).stdout

    # pinning the champion to compare with (what each lifecycle run does) re-evaluates, and only that
    sh(sys.executable, "-m", "pipelines", "promote", cwd=project)
    params["evaluate"]["compare_with"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(dvc("repro", cwd=project)) == {"evaluate", "gate"}
    metrics = yaml.safe_load((project / "reports" / "evaluate" / "metrics.json").read_text())
    assert metrics["champion_version"] == 1
    queued_sweep(project)


def test_a_new_drop_reruns_both_and_a_faulty_drop_stops_prepare(project):
    dvc("repro", cwd=project)
    sh(sys.executable, "-m", "pipelines", "sample", "--out", "data/raw", "--rows", "200", "--seed", "1", cwd=project)
    dvc("add", "-q", "data/raw", cwd=project)
    assert ran(dvc("repro", cwd=project)) == ALL
    card_before = (project / "data" / "prepared" / "data_card.json").read_bytes()

    sh(sys.executable, "-m", "pipelines", "sample", "--out", "data/raw", "--rows", "200", "--seed", "2",
       "--faulty", cwd=project)
    dvc("add", "-q", "data/raw", cwd=project)
    failed = dvc("repro", cwd=project, check=False)
    assert failed.returncode != 0
    assert "validation failed" in failed.stderr
    assert (project / "data" / "prepared" / "data_card.json").read_bytes() == card_before


def queued_sweep(project):
    """Two queued experiments over the LoRA rank, each in a temporary workspace that has no registry
    (git-ignored): evaluate still compares with champion v1 of the repository they came from."""
    repo = project.parents[1]
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")  # the registry and the DVC remote stay out of git
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "sweep base", cwd=repo)
    for rank in (4, 8):
        dvc("exp", "run", "--queue", "-S", f"train.lora.r={rank}", cwd=project)
    subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", "1"], cwd=project, env=cli_env(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)  # its worker outlives it
    deadline = time.monotonic() + 480
    while time.monotonic() < deadline:
        status = dvc("queue", "status", cwd=project).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    dvc("queue", "stop", cwd=project)  # the idle worker would otherwise outlive the test
    assert status.count("Success") == 2, status
    shown = json.loads(dvc("exp", "show", "--json", cwd=project).stdout)
    exps = {r["name"]: r["data"] for b in shown for e in b.get("experiments") or [] for r in e["revs"]}
    assert len(exps) == 2
    ranks, metrics = set(), {}
    for name, data in exps.items():
        ranks.add(data["params"]["projects/text-classifier/params.yaml"]["data"]["train"]["lora"]["r"])
        found = {path.rsplit("projects/text-classifier/", 1)[-1]: m["data"] for path, m in data["metrics"].items()}
        assert found["reports/evaluate/metrics.json"]["champion_version"] == 1, name  # the origin's registry
        trained = found["reports/train/metrics.json"]  # DVCLive's summary: the series' last step and values
        assert trained["step"] == trained["steps"] and trained["loss"] == trained["final_train_loss"]
        metrics[name] = found
    assert ranks == {4, 8}
    first, second = sorted(exps)
    diff = json.loads(dvc("metrics", "diff", first, second, "--all", "--json", cwd=project).stdout)
    row = diff["reports/evaluate/metrics.json"]["candidate.accuracy"]
    assert (row["old"], row["new"]) == tuple(metrics[n]["reports/evaluate/metrics.json"]["candidate"]["accuracy"]
                                             for n in (first, second))
    plots = json.loads(dvc("plots", "diff", first, second, "--json", "--split", cwd=project).stdout)["data"]
    loss, = plots["reports/train/plots/metrics/loss.tsv"]  # DVCLive's series, one curve per experiment
    assert sorted(loss["revisions"]) == [first, second]
