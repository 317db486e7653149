"""The train stage on real (tiny or packaged) models: learning, reload, resume, determinism, bad input."""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from pipelines.core.config import parse_params
from pipelines.stages.train import train
from pipelines.training.batching import collate_classification, encode_classification
from pipelines.training.modeling import load_trained
from tests.conftest import cli_env
from tests.tiny_models import build_causal

ARCHS = ("llama", "mistral", "falcon")


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    return [{"prompt": f"question {i}: what is {i} plus {i}?", "response": f"answer: it is {2 * i}."}
            for i in range(seed, seed + n)]


def write_prepared(root: Path, train_rows, val_rows, label_map=None) -> Path:
    out = root / "prepared"
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(train_rows).to_parquet(out / "train.parquet", index=False)
    pd.DataFrame(val_rows).to_parquet(out / "validation.parquet", index=False)
    if label_map is not None:
        (out / "label_map.json").write_text(json.dumps(label_map))
    return out


def make_params(root: Path, task: str, **train):
    return parse_params({
        "data": {"task": task},
        "prepare": {"output_dir": str(root / "prepared")},
        "train": {"output_dir": str(root / "model"), "checkpoint_dir": str(root / "ckpt"),
                  "report_dir": str(root / "reports"), "log_every": 5, **train},
    })


def adapter_sha(root: Path) -> str:
    return hashlib.sha256((root / "model" / "adapter" / "adapter_model.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_bases(tmp_path_factory):
    base = tmp_path_factory.mktemp("bases")
    return {arch: build_causal(arch, base / arch) for arch in ARCHS + ("gpt_neox",)}


@pytest.mark.parametrize("arch", ARCHS)
def test_causal_lm_trains_saves_and_reloads_identically(arch, tiny_bases, tmp_path):
    write_prepared(tmp_path, sft_rows(64), sft_rows(16, seed=100))
    params = make_params(tmp_path, "causal_lm", base_model=str(tiny_bases[arch]), max_length=64, epochs=6,
                         batch_size=4, learning_rate=0.01, checkpoint_every=1000)
    result = train(params)
    losses = pd.read_csv(tmp_path / "reports" / "plots" / "metrics" / "loss.tsv", sep="\t")["loss"].tolist()
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    assert (tmp_path / "model" / "adapter" / "adapter_model.safetensors").exists()
    assert not list((tmp_path / "model").rglob("*.bin"))
    config = json.loads((tmp_path / "model" / "train_config.json").read_text())
    assert config["chat_template_added"] is True and len(config["base_hash"]) == 64
    card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    assert card["hardware"]["device"] == "cpu" and card["hardware"]["dtype"] == "float32"

    reloaded, tok = load_trained(tmp_path / "model")
    ids = tok(["question 7: what is 7 plus 7?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(result.model(input_ids=ids).logits, reloaded(input_ids=ids).logits)


def test_minilm_learns_banking77_subset_and_reloads(banking77, tmp_path):
    frame = pd.read_csv(banking77)
    labels = sorted(frame["category"].unique())[:10]
    frame = frame[frame["category"].isin(labels)].rename(columns={"category": "label"})
    frame = frame.groupby("label").sample(60, random_state=0)
    val = frame.groupby("label").tail(15)
    trn = frame.drop(val.index)
    label_map = {lab: i for i, lab in enumerate(labels)}
    write_prepared(tmp_path, trn[["text", "label"]], val[["text", "label"]], label_map)
    params = make_params(tmp_path, "classification", epochs=5, batch_size=16, learning_rate=0.003,
                         checkpoint_every=1000)
    result = train(params)
    majority = val["label"].value_counts().max() / len(val)
    assert result.metrics["eval_accuracy"] >= 0.6 > majority + 0.4, result.metrics

    reloaded, tok = load_trained(tmp_path / "model")
    batch = collate_classification(encode_classification(val["text"].tolist()[:8], [0] * 8, tok, 64), tok.pad_token_id)
    with torch.no_grad():
        a = result.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(a, b)


def test_same_seed_same_adapter(tiny_bases, tmp_path):
    hashes = []
    for run in ("a", "b"):
        root = tmp_path / run
        write_prepared(root, sft_rows(32), sft_rows(8, seed=100))
        train(make_params(root, "causal_lm", base_model=str(tiny_bases["llama"]), max_length=64, epochs=2,
                          batch_size=4, checkpoint_every=1000))
        hashes.append(adapter_sha(root))
    assert hashes[0] == hashes[1]


def _params_file(root: Path, base: Path) -> Path:
    params = {"data": {"task": "causal_lm"}, "prepare": {"output_dir": str(root / "prepared")},
              "train": {"base_model": str(base), "output_dir": str(root / "model"), "checkpoint_dir": str(root / "ckpt"),
                        "report_dir": str(root / "reports"), "max_length": 64, "epochs": 8, "batch_size": 2,
                        "checkpoint_every": 5, "keep_checkpoints": 2, "log_every": 1}}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_bases, tmp_path):
    roots = {name: tmp_path / name for name in ("straight", "killed")}
    for root in roots.values():
        write_prepared(root, sft_rows(48), sft_rows(8, seed=100))
        _params_file(root, tiny_bases["llama"])
    cmd = [sys.executable, "-m", "pipelines", "train"]
    subprocess.run(cmd, cwd=roots["straight"], env=cli_env(), check=True, capture_output=True, timeout=600)

    root = roots["killed"]
    proc = subprocess.Popen(cmd, cwd=root, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((root / "ckpt").glob("step-*/manifest.json"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (root / "model").exists(), "a killed run must not leave an output directory"
    newest = sorted((root / "ckpt").glob("step-*"))[-1]
    (newest / "trainable.safetensors").write_bytes(b"truncated")  # the newest is corrupt: must be skipped

    resumed = subprocess.run(cmd, cwd=root, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "skipping incomplete or corrupt checkpoint" in resumed.stderr
    assert "resuming from" in resumed.stderr
    straight = json.loads((roots["straight"] / "model" / "metrics.json").read_text())
    after = json.loads((root / "model" / "metrics.json").read_text())
    assert after["steps"] == straight["steps"]
    assert abs(after["eval_loss"] - straight["eval_loss"]) <= 1e-4
    assert abs(after["final_train_loss"] - straight["final_train_loss"]) <= 1e-4


BAD = [
    ("missing base model", {"base_model": "/nonexistent/model"}, None, "base model not found"),
    ("pickle-only base", {"base_model": "PICKLE"}, None, "refusing to load them"),
    ("unknown architecture", {"base_model": "NEOX"}, None, "no known LoRA target modules for architecture 'gpt_neox'"),
    ("empty training split", {}, "empty", "the training split is empty"),
    ("max length too small", {"max_length": 8}, None, "too small for the chat template"),
    ("qlora without cuda", {"quantization": "4bit"}, None, "needs a CUDA GPU"),
    ("unknown param", {"epochz": 3}, None, "unknown key 'train.epochz'"),
    ("every prompt longer than max_length", {}, "long", "no training example keeps any response token"),
    ("flex attention on cpu", {"attn_implementation": "flex_attention"}, None, "flex_attention needs a CUDA GPU"),
    ("liger on cpu", {"kernels": "liger"}, None, "liger needs a CUDA GPU"),
    ("micro-batch budget under one example", {"micro_batch_tokens": 32}, None,
     "micro_batch_tokens (32) is smaller than max_length (64)"),
]

LONG = "please read all of this " * 40  # far beyond max_length 64 once rendered


@pytest.mark.parametrize("case, train_overrides, data, fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_exit_2_and_no_output(case, train_overrides, data, fragment, tiny_bases, tmp_path,
                                                    capsys, monkeypatch):
    from pipelines.cli import main

    monkeypatch.chdir(tmp_path)
    rows = [{**r, "prompt": LONG + r["prompt"]} for r in sft_rows(8)] if data == "long" else sft_rows(8)
    write_prepared(tmp_path, [] if data == "empty" else rows, sft_rows(4, seed=50))
    if data == "empty":
        pd.DataFrame({"prompt": pd.Series([], dtype=str), "response": pd.Series([], dtype=str)}).to_parquet(
            tmp_path / "prepared" / "train.parquet")
    base = str(tiny_bases["llama"])
    if train_overrides.get("base_model") == "PICKLE":
        pickle_dir = tmp_path / "pickle_base"
        pickle_dir.mkdir()
        (pickle_dir / "config.json").write_text((tiny_bases["llama"] / "config.json").read_text())
        (pickle_dir / "pytorch_model.bin").write_bytes(b"not really")
        train_overrides = {**train_overrides, "base_model": str(pickle_dir)}
    if train_overrides.get("base_model") == "NEOX":
        train_overrides = {**train_overrides, "base_model": str(tiny_bases["gpt_neox"])}
    params = {"data": {"task": "causal_lm"}, "prepare": {"output_dir": "prepared"},
              "train": {"base_model": base, "max_length": 64, "max_steps": 2, **train_overrides}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    rc = main(["train"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert fragment in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1
    assert not (tmp_path / "models").exists()


def test_label_absent_from_label_map(tmp_path, capsys, monkeypatch):
    from pipelines.cli import main

    monkeypatch.chdir(tmp_path)
    rows = [{"text": f"hello {i}", "label": "a" if i % 2 else "b"} for i in range(10)]
    write_prepared(tmp_path, rows, rows[:4], {"a": 0})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"prepare": {"output_dir": "prepared"}}))
    assert main(["train"]) == 2
    assert "label 'b' in the train split is absent from" in capsys.readouterr().err


def test_gradient_checkpointing_and_messages_format(tiny_bases, tmp_path):
    rows = [{"messages": json.dumps([{"role": "system", "content": "be brief"},
                                     {"role": "user", "content": r["prompt"]},
                                     {"role": "assistant", "content": r["response"]}])} for r in sft_rows(24)]
    write_prepared(tmp_path, rows, rows[:4])
    result = train(make_params(tmp_path, "causal_lm", base_model=str(tiny_bases["mistral"]), max_length=64,
                               epochs=2, batch_size=4, gradient_checkpointing=True, checkpoint_every=1000))
    assert result.metrics["steps"] > 0 and math.isfinite(result.metrics["eval_loss"])


def test_prompts_too_long_for_max_length_are_skipped_and_counted(tiny_bases, tmp_path, capsys, monkeypatch):
    from pipelines.cli import main

    monkeypatch.chdir(tmp_path)
    rows = sft_rows(12)
    for r in rows[:3]:
        r["prompt"] = LONG + r["prompt"]
    write_prepared(tmp_path, rows, sft_rows(4, seed=50))
    params = {"data": {"task": "causal_lm"}, "prepare": {"output_dir": "prepared"},
              "train": {"base_model": str(tiny_bases["llama"]), "max_length": 64, "max_steps": 2}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["train"]) == 0
    assert "note: 3 train examples had no response tokens left within max_length; skipped" in capsys.readouterr().err
    assert json.loads((tmp_path / "models" / "candidate" / "metrics.json").read_text())["train_examples"] == 9
