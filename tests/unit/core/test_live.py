"""A stage's metrics and series, written by DVCLive in its own layout (what DVC's commands read)."""
from __future__ import annotations

import json

import pandas as pd

from pipelines.core import live


def test_the_summary_and_each_series_column_land_where_dvc_reads_them(tmp_path):
    history = [{"step": 10, "loss": 2.5, "lr": 0.01}, {"step": 20, "loss": 1.5, "lr": 0.005},
               {"step": 25, "loss": 1.25, "lr": None}]  # a value not logged at a step is left out
    live.write(tmp_path, {"train_tokens": 1234, "final_train_loss": 1.25}, history)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary == {"train_tokens": 1234, "final_train_loss": 1.25, "loss": 1.25, "lr": 0.005, "step": 25}
    loss = pd.read_csv(tmp_path / live.PLOTS / "loss.tsv", sep="\t")
    assert loss["step"].tolist() == [10, 20, 25] and loss["loss"].tolist() == [2.5, 1.5, 1.25]
    assert pd.read_csv(tmp_path / live.PLOTS / "lr.tsv", sep="\t")["step"].tolist() == [10, 20]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "plots"]  # no dvc.yaml, no report


def test_a_summary_alone_is_kept_as_given(tmp_path):
    doc = {"task": "classification", "candidate": {"accuracy": 0.9, "per_class": {}}, "champion": None}
    live.write(tmp_path, doc)
    assert json.loads((tmp_path / "metrics.json").read_text()) == doc
    assert not (tmp_path / "plots").exists()


def test_it_writes_files_only_even_in_a_git_repository_without_commits(tmp_path, monkeypatch):
    """DVCLive's own Live would `dvc init` here, and fails on a repository with no commit."""
    import subprocess

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    live.write("reports", {"steps": 1}, [{"step": 1, "loss": 0.5}])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".git", "reports"]
