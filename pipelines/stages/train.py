"""Stage `train`: LoRA / QLoRA fine-tuning of a base model on the prepared splits.

Inputs: `prepare.output_dir` (train/validation Parquet, label_map.json), the `data.task` and
the `train` params. Outputs, each replaced as a whole in one rename:
- `train.output_dir`: `adapter/` (peft adapter, safetensors), `tokenizer/`, `label_map.json`,
  `train_config.json` (resolved config: base id/path/hash, labels, data version, params),
  `metrics.json`, `model_card.md` and `model_card.json`;
- `train.report_dir`, written by DVCLive: `metrics.json` (DVC metrics) and `plots/metrics/loss.tsv`
  and `lr.tsv` per logged step (DVC plots);
- `train.checkpoint_dir`: atomic checkpoints every `checkpoint_every` steps; a re-run with the
  same config and data resumes from the newest valid one.
The same code runs on CPU (fp32, all cores) and CUDA (bf16/fp16, optional 4-bit QLoRA).
"""
from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import live
from pipelines.core.config import Params
from pipelines.core.dataio import atomic_dir, write_json
from pipelines.core.errors import InputError
from pipelines.core.hashing import content_hash, sha256_file
from pipelines.inference import predict
from pipelines.tasks import task_spec
from pipelines.training import batching, checkpoint, distributed
from pipelines.training.distributed import SINGLE, Dist
from pipelines.training.modeling import (
    apply_kernels,
    attach_lora,
    attention_implementation,
    check_kernels,
    load_base,
    load_tokenizer,
    require_safetensors,
    resolve_base,
    select_hardware,
)
from pipelines.training.step import StepConfig, make_optimizer, train_step

# Fields that change where things go or how often we log, not what is trained.
NOT_TRAINING = {"output_dir", "checkpoint_dir", "report_dir", "log_every", "checkpoint_every", "keep_checkpoints"}


def seed_everything(seed: int, deterministic: bool = True) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def load_splits(prepared: Path, task: str) -> dict[str, pd.DataFrame]:
    splits = {}
    for name in ("train", "validation"):
        path = prepared / f"{name}.parquet"
        if not path.exists():
            raise InputError(f"{path} not found; run the prepare stage first")
        try:
            splits[name] = pd.read_parquet(path)
        except Exception as err:
            raise InputError(f"{path}: not a readable Parquet file ({type(err).__name__})") from None
    if splits["train"].empty:
        raise InputError(f"{prepared / 'train.parquet'}: the training split is empty")
    return splits


def _label_list(prepared: Path, splits: dict[str, pd.DataFrame]) -> list[str]:
    path = prepared / "label_map.json"
    if not path.exists():
        raise InputError(f"{path} not found; run the prepare stage first")
    label_map = json.loads(path.read_text(encoding="utf-8"))
    for name, frame in splits.items():
        unknown = sorted(set(frame["label"].astype(str)) - set(label_map))
        if unknown:
            raise InputError(f"label {unknown[0]!r} in the {name} split is absent from {path}")
    labels = sorted(label_map, key=label_map.get)
    if [label_map[lab] for lab in labels] != list(range(len(labels))):
        raise InputError(f"{path}: label ids must be 0..{len(labels) - 1}")
    return labels


class Progress:
    """Step, loss, tokens/s and ETA: one line per update off a terminal, in place on one."""

    def __init__(self, total: int, every: int, done: int = 0) -> None:
        self.total, self.every, self.start_step = total, every, done
        self.t0, self.tokens = time.perf_counter(), 0
        self.tty = sys.stderr.isatty()

    def add_tokens(self, tokens: int) -> None:
        self.tokens += tokens

    def update(self, step: int, epoch: int, loss: float) -> None:
        if step % self.every and step != self.total:
            return
        elapsed = time.perf_counter() - self.t0
        rate = (step - self.start_step) / elapsed if elapsed else 0.0
        eta = (self.total - step) / rate if rate else 0.0
        line = (f"train step {step}/{self.total} epoch {epoch + 1} loss {loss:.4f} "
                f"tok/s {self.tokens / max(elapsed, 1e-9):.0f} eta {time.strftime('%H:%M:%S', time.gmtime(eta))}")
        print(("\r" + line) if self.tty else line, end="" if self.tty and step != self.total else "\n",
              file=sys.stderr, flush=True)


def _encode(splits, tok, task: str, labels: list[str] | None, max_length: int):
    if task_spec(task).labelled:
        ids = {lab: i for i, lab in enumerate(labels)}
        return {name: batching.encode_classification(f["text"].astype(str).tolist(),
                                                     f["label"].astype(str).map(ids).tolist(), tok, max_length)
                for name, f in splits.items()}
    out = {}
    for name, frame in splits.items():
        examples, dropped = batching.encode_sft_rows(frame.to_dict("records"), tok, max_length)
        if dropped:
            print(f"note: {dropped} {name} examples had no response tokens left within max_length; skipped",
                  file=sys.stderr)
        out[name] = examples
    if not out["train"]:
        raise InputError("no training example keeps any response token within train.max_length")
    return out


def _packs(task: str, tp) -> bool:
    """Whether this run's steps are packed rows (causal LMs with packing) rather than examples."""
    return task_spec(task).generative and tp.packing


def plan_epoch(examples, task: str, tp, epoch: int) -> list:
    lengths = [len(e.input_ids) for e in examples]
    seed = tp.seed * 1000 + epoch
    if _packs(task, tp):
        return batching.packed_batches(lengths, tp.max_length, tp.batch_size, seed)
    return batching.length_grouped_batches(lengths, tp.batch_size, seed, group=tp.group_by_length)


def collate(examples, members: list, task: str, tp, pad_id: int, width: int | None):
    """One micro-batch: packed rows (lists of example indices) or example indices."""
    if _packs(task, tp):
        return batching.collate_packed([[examples[i] for i in row] for row in members], pad_id, width)
    chosen = [examples[i] for i in members]
    if task_spec(task).labelled:
        return batching.collate_classification(chosen, pad_id)
    return batching.collate_padded_causal(chosen, pad_id)


def micro_plan(examples, members: list, task: str, tp, width: int | None) -> list[list]:
    """A rank's share of one step, split by `gradient_accumulation_steps` and `micro_batch_tokens`."""
    if not members:
        return []
    packed = _packs(task, tp)
    widths = [(width or sum(len(examples[i].input_ids) for i in m)) if packed else len(examples[m].input_ids)
              for m in members]
    return batching.split_micro(members, widths, tp.gradient_accumulation_steps, tp.micro_batch_tokens)


def micro_batches(examples, item: list, task: str, tp, pad_id: int, width: int | None,
                  dist: Dist, lockstep: bool) -> tuple[list[dict], int]:
    """This rank's collated micro-batches of one step, and how many of them (at the end) are fillers:
    with `lockstep` (FSDP, whose collectives need every rank in every forward) a rank with fewer
    micro-batches than another repeats one with zero weight."""
    parts = micro_plan(examples, distributed.share(item, dist), task, tp, width)
    fillers = 0
    if lockstep:
        most = max(len(micro_plan(examples, distributed.share(item, Dist(r, dist.world)), task, tp, width))
                   for r in range(dist.world))
        fillers = most - len(parts)
        parts += [parts[-1] if parts else item[:1]] * fillers
    return [collate(examples, part, task, tp, pad_id, width) for part in parts], fillers


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    model: Any  # the trained peft model, in eval mode
    tokenizer: Any


def step_counts(examples, plan_item: list, task: str, tp) -> tuple[int, int]:
    """Real tokens and loss items (see `step.items`) of a whole optimiser step, on every rank alike."""
    packed = _packs(task, tp)
    chosen = [examples[i] for m in plan_item for i in (m if packed else [m])]
    return (sum(len(e.input_ids) for e in chosen),
            sum(batching.example_items(e, task_spec(task).labelled) for e in chosen))


def train(params: Params, resume: bool = True, dist: Dist = SINGLE) -> TrainResult:
    """Fine-tune and write the outputs. Raises InputError/ConfigError for bad input (exit 2).
    Under torchrun (`dist.world` > 1) every rank trains its share of each step; rank 0 writes."""
    import torch
    from peft.helpers import disable_input_dtype_casting

    tp, task = params.train, params.data.task
    t_start = time.perf_counter()
    prepared = Path(params.prepare.output_dir)
    splits = load_splits(prepared, task)
    labels = _label_list(prepared, splits) if task_spec(task).labelled else None
    hw = select_hardware(tp.precision, tp.quantization)
    distributed.init(dist, hw.device)
    check_kernels(tp.kernels, hw)
    attn = attention_implementation(tp.attn_implementation, hw, task_spec(task).generative)
    base = resolve_base(tp.base_model)
    require_safetensors(base)
    tok = load_tokenizer(base)
    template_added = task_spec(task).generative and batching.ensure_chat_template(tok)
    encoded = _encode(splits, tok, task, labels, tp.max_length)

    seed_everything(tp.seed, tp.deterministic)
    model = apply_kernels(load_base(base, task, hw, tp.quantization, labels, attn), tp.kernels)
    model = attach_lora(model, task, tp.lora, tp.gradient_checkpointing, quantized=tp.quantization == "4bit")
    model.to(hw.device)
    if tp.sharding == "fsdp":
        distributed.shard(model, dist)
    lockstep = distributed.sharded(model)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, tp.learning_rate, tp.weight_decay, hw.device)
    plans = [plan_epoch(encoded["train"], task, tp, e) for e in range(tp.epochs)]
    total = sum(len(p) for p in plans)
    total = min(total, tp.max_steps) if tp.max_steps else total
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, int(tp.warmup_ratio * total), total)
    data_version = content_hash(prepared)
    meta = {"train": {k: v for k, v in tp.model_dump(mode="json").items() if k not in NOT_TRAINING},
            "task": task, "data_version": data_version}

    step, start, history, tokens_seen = 0, (0, 0), [], 0
    Path(tp.checkpoint_dir).mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint.latest_valid(tp.checkpoint_dir, meta) if resume else None
    if ckpt is not None:
        state = checkpoint.load(ckpt, model, optimizer, scheduler)
        step, pos = state["step"], state["position"]
        start, history, tokens_seen = (pos["epoch"], pos["batch"]), pos["history"], pos["tokens"]
        print(f"resuming from {ckpt} (step {step})", file=sys.stderr)

    pad_id = tok.pad_token_id
    progress = Progress(total, tp.log_every, done=step)
    scaler = torch.amp.GradScaler("cuda") if hw.dtype_name == "float16" else None
    cfg = StepConfig(task_spec(task).labelled, hw.device, hw.dtype, tp.max_grad_norm, tp.labelled_logits_only, dist)
    width = batching.packed_width(tp.max_length, fixed=hw.device == "cuda")
    pending: list[tuple[dict, Any]] = []  # logged steps whose loss is still on the device
    t_loop = time.perf_counter()
    for epoch in range(start[0], tp.epochs):
        for bi, item in enumerate(plans[epoch]):
            if (epoch, bi) < start or step >= total:
                continue
            micro, fillers = micro_batches(encoded["train"], item, task, tp, pad_id, width, dist, lockstep)
            for mb in micro:
                mb.pop("num_tokens")
            n_tokens, n_items = step_counts(encoded["train"], item, task, tp)
            with disable_input_dtype_casting(model, active=hw.dtype_name != "float32"):
                loss = train_step(model, micro, optimizer, scheduler, cfg, trainable, scaler, n_items, fillers)
            step += 1
            tokens_seen += n_tokens
            pending.append(({"step": step, "loss": None, "lr": scheduler.get_last_lr()[0]}, loss))
            progress.add_tokens(n_tokens)
            if step % tp.log_every == 0 or step == total or step % tp.checkpoint_every == 0:
                history += _settle(pending)  # one host sync per log line, not per step
                if dist.main:
                    progress.update(step, epoch, history[-1]["loss"])
            if step % tp.checkpoint_every == 0 and step < total:  # every rank gathers, rank 0 writes
                checkpoint.save(tp.checkpoint_dir, step, model, optimizer, scheduler,
                                {"epoch": epoch, "batch": bi + 1, "history": history, "tokens": tokens_seen},
                                meta, keep=tp.keep_checkpoints, write=dist.main)

    history += _settle(pending)
    loop_seconds = time.perf_counter() - t_loop
    weights = distributed.trainable_full(model)  # the adapter, whole (gathered by every rank under FSDP)
    if lockstep or dist.main:  # a sharded model evaluates on every rank together
        evals = predict.mean_loss(model, encoded["validation"], task, tp.eval_batch_size, pad_id, hw.device)
    if not dist.main:  # rank 0 writes; the others are done
        distributed.finish(dist)
        model.eval()
        return TrainResult({"steps": step, "rank": dist.rank}, model, tok)
    duration = time.perf_counter() - t_start
    metrics = {"steps": step, "epochs": tp.epochs, "train_examples": len(encoded["train"]),
               "final_train_loss": history[-1]["loss"] if history else None,
               "train_tokens": tokens_seen, "train_loop_seconds": round(loop_seconds, 2),
               "duration_seconds": round(duration, 2), **evals}
    config = {"task": task, "base_model": tp.base_model, "base_path": str(base), "base_hash": content_hash(base),
              "labels": labels, "data_version": data_version, "chat_template_added": template_added,
              "params": tp.model_dump(mode="json"), "hardware": {**hw.describe(), "processes": dist.world}}
    _write_outputs(tp, model, tok, labels, config, metrics, history, weights)
    distributed.finish(dist)
    print(f"trained {tp.base_model} ({task}) in {duration:.0f}s: {step} steps, "
          + ", ".join(f"{k} {v:.4f}" for k, v in evals.items()) + f"; adapter in {tp.output_dir}", file=sys.stderr)
    model.eval()
    return TrainResult(metrics, model, tok)


def _settle(pending: list) -> list[dict]:
    """Fill the losses of logged steps from the device in one transfer."""
    import torch

    if not pending:
        return []
    values = torch.stack([loss for _, loss in pending]).float().cpu().tolist()
    rows = [{**row, "loss": round(v, 6)} for (row, _), v in zip(pending, values)]
    pending.clear()
    return rows


def _write_outputs(tp, model, tok, labels, config, metrics, history, weights: dict) -> None:
    with atomic_dir(tp.output_dir, owner="train") as tmp:
        model.save_pretrained(str(tmp / "adapter"), safe_serialization=True, state_dict=weights)
        tok.save_pretrained(str(tmp / "tokenizer"))
        if labels is not None:
            write_json(tmp / "label_map.json", {lab: i for i, lab in enumerate(labels)})
        write_json(tmp / "train_config.json", config)
        write_json(tmp / "metrics.json", metrics)
        card = {**{k: config[k] for k in ("task", "base_model", "base_hash", "data_version", "params", "hardware")},
                "metrics": metrics, "adapter_sha256": sha256_file(tmp / "adapter" / "adapter_model.safetensors")}
        write_json(tmp / "model_card.json", card)
        (tmp / "model_card.md").write_text(_card_md(card), encoding="utf-8")
    with atomic_dir(tp.report_dir, owner="train-report") as tmp:
        live.write(tmp, metrics, history)  # metrics.json and plots/metrics/{loss,lr}.tsv, by DVCLive


def _card_md(card: dict) -> str:
    m = card["metrics"]
    lines = [f"# Model card: LoRA adapter on {card['base_model']}", "",
             f"- task: {card['task']}", f"- base model sha256: `{card['base_hash']}`",
             f"- data version (prepared data sha256): `{card['data_version']}`",
             f"- adapter sha256: `{card['adapter_sha256']}`",
             f"- hardware: {card['hardware']['name']} ({card['hardware']['dtype']}, {card['hardware']['threads']} threads)",
             f"- duration: {m['duration_seconds']} s, {m['steps']} steps", "", "## Metrics", ""]
    lines += [f"- {k}: {v}" for k, v in m.items()]
    lines += ["", "## Params", "", "```json", json.dumps(card["params"], indent=2), "```"]
    return "\n".join(lines) + "\n"
