"""pipelines.lifecycle without Airflow: the run's values re-checked, written into params.yaml with
comments kept and restored, stage exit codes mapped to retry/no-retry, drops detected, notes."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import yaml

from pipelines import lifecycle
from pipelines.config import load_params
from pipelines.errors import CheckFailed, ConfigError
from tests.conftest import ROOT


@pytest.fixture
def params():
    return load_params(ROOT / "params.yaml")


@pytest.mark.parametrize("conf, message", [
    ({"dataset": "../../etc"}, "dataset '../../etc' is not one of ['default']"),
    ({"base_model": "meta-llama/Llama-3-8B"}, "base_model 'meta-llama/Llama-3-8B' is not in the allowlist"),
    ({"epochs": 0}, "epochs must be 1..20"), ({"epochs": 21}, "epochs must be 1..20"),
    ({"learning_rate": 0.5}, "learning_rate must be within"), ({"lora_rank": 12}, "lora_rank must be one of"),
    ({"min_accuracy": 0.2}, "min_accuracy must be within [0.5, 1]"), ({"min_macro_f1": 1.5}, "min_macro_f1 must be within"),
    ({"epochs": "three"}, "invalid 'epochs'"), ({"path": "/data"}, "unknown field 'path'"),
])
def test_run_values_are_checked_again(params, conf, message):
    with pytest.raises(ConfigError) as err:
        lifecycle.check_conf(conf, params)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_only_changed_values_become_overrides(params):
    same = lifecycle.check_conf({"epochs": params.train.epochs, "dataset": "default"}, params)
    assert lifecycle.overrides(same, params) == {}
    conf = lifecycle.check_conf({"epochs": 3, "lora_rank": 8, "min_accuracy": 0.8}, params)
    assert lifecycle.overrides(conf, params) == {
        "train": {"epochs": 3, "lora": {"r": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": None}},
        "gate": {"min_accuracy": 0.8}}


def test_params_written_with_comments_then_restored(tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    original = (ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(original)
    changes = lifecycle.overrides(lifecycle.check_conf({"epochs": 3, "min_accuracy": 0.8}, params), params)
    assert lifecycle.apply_overrides(changes)
    text = (tmp_path / "params.yaml").read_text()
    assert "# Single source of truth" in text and "# the promotion policy" in text  # comments kept
    written = load_params(tmp_path / "params.yaml")
    assert written.train.epochs == 3 and written.gate.min_accuracy == 0.8
    assert lifecycle.apply_overrides({"train": {"epochs": 4}})  # a second change keeps the first backup
    assert lifecycle.restore_params() and (tmp_path / "params.yaml").read_text() == original
    assert not lifecycle.restore_params()  # nothing left to restore


def test_a_params_file_the_stages_would_reject_is_never_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    with pytest.raises(ConfigError, match="train.epochs"):
        lifecycle.apply_overrides({"train": {"epochs": -1}})
    assert (tmp_path / "params.yaml").read_text() == (ROOT / "params.yaml").read_text()
    assert not lifecycle.BACKUP.exists()


def test_new_drops_are_detected_once(tmp_path):
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "drop-0000.csv").write_text("text,label\na,b\n")
    assert lifecycle.new_drops(tmp_path, "data/raw") == []  # first look only remembers
    assert lifecycle.new_drops(tmp_path, "data/raw") == []
    (raw / "drop-0001.csv").write_text("text,label\nc,d\n")
    (raw / ".hidden").write_text("x")
    assert lifecycle.new_drops(tmp_path, "data/raw") == ["drop-0001.csv"]
    assert lifecycle.new_drops(tmp_path, "data/raw") == []


@pytest.mark.parametrize("record, note", [
    ({"failed": {"task": "validate", "error": "2 checks failed"}}, "stopped at validate: 2 checks failed"),
    ({"gate": {"passed": False, "candidate": "abcdef0123456789", "reasons": "min_accuracy: 0.41 < 0.7"}},
     "gate rejected candidate abcdef012345: min_accuracy: 0.41 < 0.7"),
    ({"gate": {"passed": True, "summary": "5/5 rules"}, "promotion": {"model": "m", "version": 3, "changed": True}},
     "promoted m v3 (gate passed: 5/5 rules)"),
    ({"gate": {"passed": True, "summary": "5/5 rules"}, "approval": "rejected"}, "a reviewer rejected the promotion"),
])
def test_run_note(record, note):
    assert lifecycle.run_note(record) == note


@pytest.fixture
def dvc_repo(tmp_path):
    """A real git + DVC repo whose `validate` stage exits with the code in code.txt."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "code.txt").write_text("0")
    (tmp_path / "stage.py").write_text(textwrap.dedent("""\
        import sys
        code = int(open("code.txt").read())
        if code:
            print("error: the data is bad", file=sys.stderr)
            sys.exit(code)
        open("out.txt", "w").write("ok")
        """))
    (tmp_path / "dvc.yaml").write_text(textwrap.dedent(f"""\
        stages:
          validate:
            cmd: {sys.executable} stage.py
            deps: [code.txt, stage.py]
            outs: [out.txt]
        """))
    return tmp_path


@pytest.mark.parametrize("code, error, retried", [(1, CheckFailed, False), (2, ConfigError, False),
                                                  (3, lifecycle.TransientError, True)])
def test_stage_failures_map_to_retry_or_not(dvc_repo, code, error, retried):
    (dvc_repo / "code.txt").write_text(str(code))
    with pytest.raises(error) as err:
        lifecycle.run_stage(dvc_repo, "validate")
    assert lifecycle.is_deterministic(err.value) is not retried
    if not retried:
        assert str(err.value) == "validate: the data is bad"


def test_stage_runs_then_is_skipped(dvc_repo):
    assert lifecycle.run_stage(dvc_repo, "validate")["ran"] is True
    assert lifecycle.run_stage(dvc_repo, "validate")["ran"] is False
    assert yaml.safe_load((dvc_repo / "dvc.lock").read_text())["stages"]["validate"]["outs"][0]["path"] == "out.txt"
    with pytest.raises(ConfigError, match="unknown stage"):
        lifecycle.run_stage(dvc_repo, "deploy")


def test_notify_serving_waits_for_the_new_version(tmp_path, monkeypatch):
    """A fake server that switches to v2 after a few polls: confirmed; one stuck on v1: a retryable error."""
    from fastapi import FastAPI, Response

    from tests.serving_support import start_loopback

    polls = {"n": 0}
    app = FastAPI()

    @app.get("/readyz")
    def readyz():
        polls["n"] += 1
        return Response("ok", headers={"X-Model-Version": "2" if polls["n"] >= 3 else "1"})

    server, url = start_loopback(app)
    try:
        base = (ROOT / "params.yaml").read_text()
        text = base.replace("serving_urls: []", f"serving_urls: ['{url}']").replace("serving_timeout_s: 120",
                                                                                  "serving_timeout_s: 4")
        (tmp_path / "params.yaml").write_text(text)
        assert lifecycle.notify_serving(tmp_path, 2) == [url] and polls["n"] >= 3
        with pytest.raises(lifecycle.TransientError, match="still serves v2, not v3"):
            lifecycle.notify_serving(tmp_path, 3)
    finally:
        server.should_exit = True


def test_snapshot_refuses_a_dataset_without_data(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / ".hidden").write_text("x")
    with pytest.raises(lifecycle.InputError, match="dataset 'default': no data at data/raw"):
        lifecycle.start(tmp_path, {}, {"run_id": "r"})
    with pytest.raises(ConfigError, match="epochs must be"):
        lifecycle.start(tmp_path, {"epochs": 0}, {"run_id": "r"})
    assert (tmp_path / "params.yaml").read_text() == (ROOT / "params.yaml").read_text()
