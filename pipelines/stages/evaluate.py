"""Stage `evaluate`: score the candidate and the current champion on the same held-out test split.

Inputs: the candidate (`train.output_dir`), `prepare.output_dir/test.parquet`, the champion that
the registry's `champion` alias points at (if any) and the `evaluate` params. Outputs, in
`evaluate.report_dir` (replaced as a whole): `metrics.json` (DVC metrics: candidate and
champion metrics, identities and hashes), `predictions.parquet` (per example, for the gate's
paired test), `confusion.csv` (DVC confusion plot) and `confusion.png` for classification.
- classification: accuracy, macro-F1, per-class precision/recall/F1, expected calibration error,
  per-example latency p50/p95 on this hardware;
- causal_lm: loss and perplexity on response tokens, exact match and ROUGE-L of greedy answers,
  JSON validity and field match where answers must be JSON, PII in answers, time to first token,
  the golden prompts (JSONL of `prompt` + `expect` regex) as regression checks, and the same answer
  scores for the base model (the candidate with its adapter switched off: `metrics.json`'s `base`,
  `base_*` columns) so the gate can require that fine-tuning beat it.
- classification, also `routing.json`: hybrid routing's threshold, tuned on the validation split
  (`route` params, `pipelines.economics.routing`), with its frontier and the counts it came from; a
  promotion keeps it as the version's evidence and serving routes by it.
"""
from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import canaries, live, pii
from pipelines.core.config import Params
from pipelines.core.dataio import atomic_dir, normalise_text, read_file, spreadsheet_safe, write_json
from pipelines.core.errors import InputError
from pipelines.core.hashing import content_hash, sha256_file
from pipelines.economics import routing
from pipelines.economics.cost import api_tokens_estimate
from pipelines.inference import predict
from pipelines.tasks import task_spec
from pipelines.training import batching
from pipelines.training.modeling import candidate_hash, load_trained, select_hardware


def eval_rows(params: Params) -> tuple[pd.DataFrame, dict[str, str]]:
    """The rows both models are scored on, and what they are: `evaluate.holdout` when set, else the
    prepared test split."""
    if params.evaluate.holdout:
        frame, source = _load_holdout(params), {"kind": "holdout", "path": params.evaluate.holdout}
    else:
        path = Path(params.prepare.output_dir) / "test.parquet"
        if not path.exists():
            raise InputError(f"{path} not found; run the prepare stage first")
        frame, source = pd.read_parquet(path), {"kind": "test_split", "path": str(path)}
        if frame.empty:
            raise InputError(f"{path}: the test split is empty")
    source["sha256"] = sha256_file(source["path"])
    limit = params.evaluate.max_examples
    return (frame.head(limit).reset_index(drop=True) if limit else frame), source


def _load_holdout(params: Params) -> pd.DataFrame:
    """The reviewed holdout file, normalised as `prepare` normalises training text."""
    path, data = Path(params.evaluate.holdout), params.data
    if not path.is_file():
        raise InputError(f"evaluate.holdout: {path} not found (a reviewed, labelled file in the model folder)")
    frame = read_file(path)
    missing = [c for c in (data.text_column, data.label_column) if c not in frame.columns]
    if missing:
        raise InputError(f"evaluate.holdout: {path} has no column {missing[0]!r} (data.text_column/label_column)")
    out = pd.DataFrame({"text": normalise_text(frame[data.text_column], params.prepare.unicode_form,
                                               params.prepare.lowercase),
                        "label": frame[data.label_column].astype("string").str.strip()})
    empty = out.isna().any(axis=1) | (out == "").any(axis=1)
    if empty.any():
        raise InputError(f"evaluate.holdout: {path} row {int(empty.to_numpy().argmax()) + 1} has an empty text or label")
    for kind in params.data.pii_detectors:  # a file kept in git: redacted when it was reviewed, never raw
        hits = pii.detect(out["text"], kind)
        if hits.any():
            raise InputError(f"evaluate.holdout: {path} row {int(hits.to_numpy().argmax()) + 1} contains PII "
                             f"({kind}); redact the reviewed file")
    return out


def latency_ms(models: list[Path], texts: list[str], max_length: int, n: int, precision: str = "auto",
               repeats: int = 3) -> tuple[list[dict[str, float]], np.ndarray]:
    """Single-example latency of one or more models (candidate, champion) measured side by side: each
    example is timed on every model in turn (which goes first alternates), `repeats` times, and its
    fastest time kept. Returns each model's p50/p95 and the per-example times (models x examples): a busy
    neighbour slows some tries, rarely all, and slows the models alike at the same moment, so the
    per-example ratio of two models (`paired_ratio`) judges the models, not the machine's load."""
    import torch

    hw = select_hardware(precision)
    loaded = [load_trained(d, hw.device, hw.dtype_name) for d in models]
    sample = texts[: max(1, n)]
    for model, tok in loaded:
        predict.classify(model, tok, sample[:2], max_length, 1)  # warm-up
    times = np.full((len(loaded), len(sample)), math.inf)
    with torch.no_grad():
        for i, text in enumerate(sample):
            order = list(range(len(loaded)))[:: 1 if i % 2 == 0 else -1]
            for _ in range(repeats):
                for k in order:
                    model, tok = loaded[k]
                    t = time.perf_counter()
                    predict.classify(model, tok, [text], max_length, 1)
                    times[k, i] = min(times[k, i], (time.perf_counter() - t) * 1000)
    return [{"latency_p50_ms": float(np.percentile(t, 50)), "latency_p95_ms": float(np.percentile(t, 95))}
            for t in times], times


def paired_ratio(times: np.ndarray) -> float:
    """The median over examples of the first model's time over the second's, each pair timed side by side."""
    return float(np.median(times[0] / times[1]))


def classification_metrics(y: np.ndarray, probs: np.ndarray, labels: list[str], bins: int = 15) -> dict[str, Any]:
    pred = probs.argmax(1)
    per_class, f1s = {}, []
    for c, name in enumerate(labels):
        tp = int(np.sum((pred == c) & (y == c)))
        fp = int(np.sum((pred == c) & (y != c)))
        fn = int(np.sum((pred != c) & (y == c)))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else float("nan")  # class absent from the test split
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(np.sum(y == c))}
        if tp + fn:
            f1s.append(f1)
    conf = probs.max(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    present = [v["recall"] for v in per_class.values() if v["support"]]
    return {"accuracy": float((pred == y).mean()), "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
            "min_class_recall": float(min(present)) if present else 0.0, "ece": float(ece),
            "per_class": per_class}


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over whitespace tokens (longest common subsequence)."""
    a, b = candidate.split(), reference.split()
    if not a or not b:
        return float(a == b)
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, yv in enumerate(b):
            cur.append(prev[j] + 1 if x == yv else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


SHARED_COLUMNS = ("prompt", "reference")


def json_scores(answer: str, reference: str) -> dict[str, float]:
    """For answers that must be one JSON object: whether it is one, and the share of the reference's
    fields it gets exactly right (0 when it does not parse)."""
    try:
        ref = json.loads(reference)
    except ValueError:
        ref = None
    try:
        got = json.loads(answer)
    except ValueError:
        got = None
    valid = isinstance(got, dict)
    fields = ref if isinstance(ref, dict) and ref else {}
    matched = sum(valid and k in got and got[k] == v for k, v in fields.items())
    return {"json_valid": float(valid), "field_match": matched / len(fields) if fields else float(valid)}


def _generation_latency_ms(model, tok, prompts: list[list[dict]], ep) -> dict[str, float]:
    """p50/p95 time to first token and p50 time per later token, one request at a time (what a
    lone client of the served model waits), over the first `generation_latency_samples` prompts."""
    runs = [predict.timed_generate(model, tok, p, ep.max_new_tokens) for p in prompts[:ep.generation_latency_samples]]
    if not runs:
        return {}
    ttft = [r["ttft_s"] * 1000 for r in runs]
    return {"ttft_p50_ms": float(np.percentile(ttft, 50)), "ttft_p95_ms": float(np.percentile(ttft, 95)),
            "per_token_p50_ms": float(np.percentile([r["per_token_s"] * 1000 for r in runs], 50))}


def _score_causal(model, tok, frame: pd.DataFrame, params: Params, full: bool = True) -> tuple[dict, pd.DataFrame]:
    """Answer every test row and score the answers; `full` adds the timed answers and golden prompts
    (not asked of the base model: neither is a comparison the gate makes with it)."""
    ep = params.evaluate
    batching.ensure_chat_template(tok)
    rows = frame.to_dict("records")
    examples, _ = batching.encode_sft_rows(rows, tok, params.train.max_length)
    loss = predict.mean_loss(model, examples, params.data.task, params.train.eval_batch_size, tok.pad_token_id,
                             next(model.parameters()).device)["eval_loss"]
    chats = [batching.to_messages(row) for row in rows]
    answers = [a.strip() for a in predict.generate_many(model, tok, [c[:-1] for c in chats], ep.max_new_tokens,
                                                        ep.generation_batch_size)]
    per = []
    for chat, answer in zip(chats, answers):
        reference = chat[-1]["content"]
        scores = {"exact_match": float(answer == reference.strip()), "rouge_l": rouge_l(answer, reference)}
        if params.data.response_format == "json_object":
            scores |= json_scores(answer, reference)
        scores["answer_pii"] = float(any(pii.contains(answer, kind) for kind in params.data.pii_detectors))
        # what the model actually said, beside what it was asked and what was expected, for reviewers
        per.append({"prompt": chat[-2]["content"] if len(chat) > 1 else "", "reference": reference,
                    "answer": answer, **scores})
    per_frame = pd.DataFrame(per)
    metrics = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50))}
    if full:
        metrics |= _generation_latency_ms(model, tok, [c[:-1] for c in chats], ep)
    metrics |= {k: float(per_frame[k].mean()) for k in per_frame.columns if per_frame[k].dtype.kind == "f"}
    golden = Path(ep.golden_prompts) if ep.golden_prompts and full else None
    if golden is not None and golden.exists():
        cases = [json.loads(line) for line in golden.read_text(encoding="utf-8").splitlines() if line.strip()]
        said = predict.generate_many(model, tok, [[{"role": "user", "content": c["prompt"]}] for c in cases],
                                     ep.max_new_tokens, ep.generation_batch_size)
        passed = [bool(re.search(c["expect"], a)) for c, a in zip(cases, said)]
        metrics["golden_pass_rate"] = float(np.mean(passed)) if passed else 1.0
    return metrics, per_frame


def _score_base(model, tok, frame: pd.DataFrame, params: Params) -> tuple[dict, pd.DataFrame]:
    """The base model's answers to the first `evaluate.base_examples` test rows: the loaded candidate
    with its LoRA adapter switched off (no second load; exactly the weights fine-tuning started from)."""
    with model.disable_adapter():
        return _score_causal(model, tok, frame.head(params.evaluate.base_examples or len(frame)), params, full=False)


def canary_metrics(model, tok, params: Params) -> dict[str, float]:
    """The memorisation test: each canary planted in this train split (`canaries.json` from prepare)
    asked for greedily (`canary_leaks`: share whose secret comes back), and its secret's likelihood
    ranked among `evaluate.canary_alternatives` same-format secrets (exposure in bits, max and mean)."""
    path = Path(params.prepare.output_dir) / "canaries.json"
    if not path.exists():
        if params.prepare.canaries:  # planted, but not here: never report a memorisation test not run
            raise InputError(f"{path} not found although prepare.canaries is {params.prepare.canaries}; "
                             "run prepare again, or declare it as a dependency of the evaluate stage")
        return {}
    planted = [canaries.Canary(**c) for c in json.loads(path.read_text(encoding="utf-8"))]
    asked = [[{"role": "user", "content": c.prompt}] for c in planted]
    said = predict.generate_many(model, tok, asked, min(params.evaluate.max_new_tokens, 48),
                                 params.evaluate.generation_batch_size)
    k, bits = params.evaluate.canary_alternatives, []
    for c, question in zip(planted, asked):
        options = [c.secret, *canaries.alternatives(c, k)]
        answers = [[*question, {"role": "assistant", "content": f"{c.response_prefix}{s}."}] for s in options]
        nll = predict.sequence_nll(model, tok, answers, params.train.max_length)
        bits.append(canaries.exposure(1 + sum(x < nll[0] for x in nll[1:]), k + 1))
    return {"canary_leaks": float(np.mean([canaries.leaked(c, a) for c, a in zip(planted, said)])),
            "canary_exposure_max": float(max(bits)), "canary_exposure_mean": float(np.mean(bits))}


def score(model_dir: Path, frame: pd.DataFrame, params: Params,
          candidate: bool = False) -> tuple[dict, pd.DataFrame, np.ndarray | None, tuple | None]:
    """Metrics and per-example results of one model on the test frame; for the `candidate` of a
    generative task also the memorisation test of its train split's canaries and (when the task
    compares with its base model) the base model's results."""
    hw = select_hardware(params.train.precision)  # a GPU when there is one: bf16 there, fp32 on CPU
    model, tok = load_trained(model_dir, hw.device, hw.dtype_name)
    spec = task_spec(params.data.task)
    if spec.generative:
        metrics, per = _score_causal(model, tok, frame, params)
        if candidate:
            metrics |= canary_metrics(model, tok, params)
        base = (_score_base(model, tok, frame, params)
                if candidate and spec.compares_base and params.evaluate.compare_base else None)
        return metrics, per, None, base
    label_map = json.loads((model_dir / "label_map.json").read_text(encoding="utf-8"))
    labels = sorted(label_map, key=label_map.get)
    unknown = sorted(set(frame["label"]) - set(label_map))
    if unknown:
        raise InputError(f"label {unknown[0]!r} of the evaluation rows is unknown to the model in {model_dir}")
    y = frame["label"].map(label_map).to_numpy()
    texts = frame["text"].astype(str).tolist()
    probs = predict.classify(model, tok, texts, params.train.max_length, 64)
    metrics = classification_metrics(y, probs, labels)  # latency: measured side by side in `evaluate`
    pred = probs.argmax(1)
    per = pd.DataFrame({"label_id": y, "pred": pred, "correct": (pred == y).astype(float), "confidence": probs.max(1)})
    return metrics, per, probs, None


def evaluate(params: Params, champion_dir: Path | None = None, champion_version: int | None = None) -> dict:
    """Score candidate (and champion) and write the report dir; return metrics.json's content."""
    ep = params.evaluate
    cand_dir = Path(params.train.output_dir)
    cand_hash = candidate_hash(cand_dir)
    frame, scored_on = eval_rows(params)
    cand_metrics, cand_per, _, base = score(cand_dir, frame, params, candidate=True)
    asked = [c for c in SHARED_COLUMNS if c in cand_per.columns]  # the same for all models: kept once
    per = pd.concat([cand_per[asked], cand_per.drop(columns=asked).add_prefix("candidate_")], axis=1)
    if base is not None:  # rows past evaluate.base_examples: NaN, not asked of the base model
        per = pd.concat([per, base[1].drop(columns=asked).add_prefix("base_")], axis=1)
    champ_metrics = None
    champ_hash = content_hash(champion_dir) if champion_dir is not None else None
    if champion_dir is not None:
        # A champion byte-identical to the candidate (the re-run after its own promotion) predicts
        # exactly what the candidate does: reuse those scores instead of loading it again.
        champ_metrics, champ_per = (cand_metrics, cand_per) if champ_hash == cand_hash else score(
            champion_dir, frame, params)[:2]
        per = pd.concat([per, champ_per.drop(columns=asked).add_prefix("champion_")], axis=1)
    if task_spec(params.data.task).labelled:
        both = champ_metrics is not None and champ_hash != cand_hash
        timed, times = latency_ms([cand_dir, *([champion_dir] if both else [])], frame["text"].astype(str).tolist(),
                                  params.train.max_length, ep.latency_samples, params.train.precision)
        cand_metrics.update(timed[0])
        if both:
            champ_metrics.update(timed[1])
            cand_metrics["latency_ratio_vs_champion"] = paired_ratio(times)
        elif champ_metrics is not None:  # the champion is these very bytes
            cand_metrics["latency_ratio_vs_champion"] = 1.0
    doc = {"task": params.data.task, "test_rows": len(frame), "scored_on": scored_on, "candidate_hash": cand_hash,
           "candidate": cand_metrics, "base": base[0] if base else None,
           "base_rows": len(base[1]) if base else 0, "champion": champ_metrics, "champion_version": champion_version,
           "champion_hash": champ_hash}
    with atomic_dir(ep.report_dir, owner="evaluate") as tmp:
        live.write(tmp, doc)  # metrics.json, by DVCLive
        per.to_parquet(tmp / "predictions.parquet", index=False)
        if task_spec(params.data.task).labelled:
            _confusion(tmp, cand_dir, cand_per)
            write_json(tmp / "routing.json", route(cand_dir, params))
        else:  # keep the declared DVC plot present for every task
            (tmp / "confusion.csv").write_text("actual,predicted\n", encoding="utf-8")
    summary = {k: round(v, 4) for k, v in cand_metrics.items() if isinstance(v, float)}
    print(f"evaluated candidate {cand_hash[:12]} on {len(frame)} {scored_on['kind']} rows: {summary}"
          + (f"; champion v{champion_version}: accuracy {champ_metrics.get('accuracy', float('nan')):.4f}"
             if champ_metrics and "accuracy" in champ_metrics else ""), file=sys.stderr)
    return doc


def route(model_dir: Path, params: Params) -> dict:
    """The classifier's routing evidence: its scores on the validation split tallied per threshold,
    and (when the upstream's accuracy and a floor are known) the frontier and the threshold chosen on
    it; otherwise `threshold: null` and the reason."""
    path = Path(params.prepare.output_dir) / "validation.parquet"
    frame = pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=["text", "label"])
    if frame.empty:
        return {"threshold": None, "reason": f"{path}: no validation rows to tune on"}
    hw = select_hardware(params.train.precision)
    model, tok = load_trained(model_dir, hw.device, hw.dtype_name)
    label_map = json.loads((model_dir / "label_map.json").read_text(encoding="utf-8"))
    texts = frame["text"].astype(str).tolist()
    probs = predict.classify(model, tok, texts, params.train.max_length, 64)
    known = frame["label"].map(label_map)
    counts = {**routing.tally(probs.max(1).tolist(), (probs.argmax(1) == known.fillna(-1).to_numpy()).tolist()),
              "text_tokens": round(api_tokens_estimate(texts, 0), 1)}
    return {"scored_on": {"kind": "validation_split", "path": str(path), "sha256": sha256_file(path)},
            "counts": counts, **routing.tune(counts, params)}


def _confusion(out: Path, model_dir: Path, per: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label_map = json.loads((model_dir / "label_map.json").read_text(encoding="utf-8"))
    labels = sorted(label_map, key=label_map.get)
    safe = [spreadsheet_safe(label) for label in labels]  # labels come from the data: no formula reaches a sheet
    pd.DataFrame({"actual": [safe[i] for i in per["label_id"]],
                  "predicted": [safe[i] for i in per["pred"]]}).to_csv(out / "confusion.csv", index=False)
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    np.add.at(matrix, (per["label_id"].to_numpy(), per["pred"].to_numpy()), 1)
    size = max(4.0, 0.25 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("candidate confusion matrix")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=120)
    plt.close(fig)
