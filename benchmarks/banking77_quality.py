"""Held-out quality of the embedded default (MiniLM + LoRA, text-classifier's params) on banking77.

Takes the full banking77 training set (../shared/data/banking77/train.csv, 10,003 queries, 77
intents), holds out a stratified 20% (seed 0), trains with the `train` section of a model folder's
params (default: projects/text-classifier/params.yaml; a file that is not there is an error) on
the rest through `pipelines.stages.train.train`, and scores the held-out 20%. Prints progress, then one
JSON object as the last line: accuracy, macro_f1, train_seconds (the training loop), total_seconds.
Target: accuracy >= 0.90 in under 20 minutes on 2 CPU cores (the paper's best full-data
classifiers reach about 0.93).

    python benchmarks/banking77_quality.py [--params FILE] [--epochs N]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "banking77" / "train.csv"


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> float:
    scores = []
    for c in range(n):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def main() -> None:
    import torch

    from pipelines.core.config import load_params
    from pipelines.stages.train import train
    from pipelines.training.batching import collate_classification, encode_classification

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "projects" / "text-classifier" / "params.yaml",
                        help="the params file whose `train` section is the recipe")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"error: {DATA} not found (the benchmark reads banking77 from ../shared/data)")
    t0 = time.perf_counter()
    frame = pd.read_csv(DATA).rename(columns={"category": "label"})
    held = frame.groupby("label").sample(frac=0.2, random_state=0)
    rest = frame.drop(held.index)
    labels = sorted(frame["label"].unique())
    label_map = {lab: i for i, lab in enumerate(labels)}
    from pipelines.core.errors import ConfigError

    try:
        params = load_params(args.params)
    except ConfigError as err:
        sys.exit(f"error: {err}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "prepared").mkdir()
        rest.to_parquet(tmp / "prepared" / "train.parquet", index=False)
        held.to_parquet(tmp / "prepared" / "validation.parquet", index=False)
        (tmp / "prepared" / "label_map.json").write_text(json.dumps(label_map))
        overrides = {"output_dir": str(tmp / "model"), "checkpoint_dir": str(tmp / "ckpt"),
                     "report_dir": str(tmp / "reports"), "log_every": 50}
        if args.epochs:
            overrides["epochs"] = args.epochs
        params = params.model_copy(update={
            "prepare": params.prepare.model_copy(update={"output_dir": str(tmp / "prepared")}),
            "train": params.train.model_copy(update=overrides)})
        result = train(params, resume=False)
        model, tok = result.model, result.tokenizer
        preds = []
        texts = held["text"].tolist()
        with torch.no_grad():
            for i in range(0, len(texts), 128):
                batch = collate_classification(encode_classification(texts[i:i + 128], [0] * len(texts[i:i + 128]),
                                                                     tok, params.train.max_length), tok.pad_token_id)
                preds += model(input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"]).logits.argmax(-1).tolist()
    y_true = held["label"].map(label_map).to_numpy()
    y_pred = np.array(preds)
    print(json.dumps({
        "params": str(args.params), "train_examples": len(rest), "heldout_examples": len(held),
        "epochs": params.train.epochs,
        "accuracy": round(float((y_true == y_pred).mean()), 4),
        "macro_f1": round(macro_f1(y_true, y_pred, len(labels)), 4),
        "train_seconds": result.metrics["train_loop_seconds"],
        "total_seconds": round(time.perf_counter() - t0, 1),
    }))


if __name__ == "__main__":
    main()
