"""On banking77 subsets: the gate passes a good candidate and rejects one trained on shuffled labels."""
import json

import pandas as pd
import pytest

from pipelines.core.config import parse_params
from pipelines.core.errors import CheckFailed
from pipelines.registry import store as registry
from pipelines.stages.evaluate import evaluate
from pipelines.stages.gate import run_gate
from pipelines.stages.train import train


def test_gate_passes_good_and_rejects_degraded_candidate(banking77, tmp_path):
    frame = pd.read_csv(banking77).rename(columns={"category": "label"})
    labels = sorted(frame["label"].unique())[:8]
    frame = frame[frame["label"].isin(labels)].groupby("label").sample(60, random_state=1)
    test = frame.groupby("label").head(12)
    val = frame.drop(test.index).groupby("label").head(8)
    trn = frame.drop(test.index).drop(val.index)
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    for name, part in (("train", trn), ("validation", val), ("test", test)):
        part[["text", "label"]].to_parquet(prepared / f"{name}.parquet", index=False)
    (prepared / "label_map.json").write_text(json.dumps({lab: i for i, lab in enumerate(labels)}))
    params = parse_params({
        "prepare": {"output_dir": str(prepared)},
        "train": {"output_dir": str(tmp_path / "cand"), "checkpoint_dir": str(tmp_path / "ckpt"),
                  "report_dir": str(tmp_path / "rt"), "epochs": 5, "batch_size": 16, "learning_rate": 0.003},
        "evaluate": {"report_dir": str(tmp_path / "eval"), "latency_samples": 10},
        "gate": {"decision_path": str(tmp_path / "decision.json")},
        "registry": {"root": str(tmp_path / "registry")},
        "route": {"upstream_accuracy": 0.9, "min_accuracy": 0.95},
    })
    store = registry.open_store(params.registry.root, params.registry.model_name)
    registry.init(store)

    train(params, resume=False)
    evaluate(params)
    good = run_gate(params)
    assert good["passed"] and good["champion_version"] is None
    # hybrid routing tuned on the validation split: the cheapest threshold reaching 0.95 with the upstream
    routing = json.loads((tmp_path / "eval" / "routing.json").read_text())
    assert routing["counts"]["n"] == len(val) and routing["scored_on"]["kind"] == "validation_split"
    never = routing["frontier"][0]
    local = routing["counts"]["correct"] / len(val)
    assert never["upstream_share"] == 0 and never["accuracy"] == pytest.approx(local, abs=1e-4)
    chosen = routing["chosen"]
    meeting = [p for p in routing["frontier"] if p["accuracy"] >= 0.95]
    assert chosen["meets_floor"] is bool(meeting) and routing["threshold"] == chosen["threshold"]
    assert not meeting or chosen["upstream_share"] == min(p["upstream_share"] for p in meeting)
    shares = [p["upstream_share"] for p in routing["frontier"]]
    assert shares == sorted(shares) and routing["frontier"][-1]["api_usd_per_1k"] > 0  # more routed, more spent
    registry.promote(store, "text-classifier", tmp_path / "cand", tmp_path / "decision.json",
                     tmp_path / "eval" / "metrics.json")

    shuffled = trn.copy()
    shuffled["label"] = shuffled["label"].sample(frac=1.0, random_state=0).to_numpy()
    shuffled[["text", "label"]].to_parquet(prepared / "train.parquet", index=False)
    train(params, resume=False)
    champ_dir, version = registry.champion(store)
    evaluate(params, champ_dir, version)
    with pytest.raises(CheckFailed, match="gate failed"):
        run_gate(params)
    decision = json.loads((tmp_path / "decision.json").read_text())
    failed = {r["rule"] for r in decision["rules"] if not r["passed"]}
    assert {"min_accuracy", "no_regression"} <= failed
    regression = next(r for r in decision["rules"] if r["rule"] == "no_regression")
    assert regression["measured"]["p_value"] < 0.05
    with pytest.raises(CheckFailed, match="the gate failed"):
        registry.promote(store, "text-classifier", tmp_path / "cand", tmp_path / "decision.json", None)
    assert registry.aliases(registry.read_ledger(store)) == {"champion": 1}
