"""Real (non-padding) training tokens per second: this trainer against a naive baseline.

Baseline: Hugging Face `Trainer` on the same LoRA model, data, optimiser settings and number of
examples per step, with every example padded to max_length, no length grouping, no packing.
Ours: `pipelines.stages.train.train` (length-grouped dynamic padding for classification, packed rows
with per-example attention for causal LM). Both final eval losses are computed by the same
function on the same validation examples.
- classification: MiniLM + LoRA on a stratified banking77 subset (../shared/data/banking77);
- causal LM: a tiny Llama built from a config, on a generated instruction set whose lengths
  spread log-uniformly from a few tokens to max_length.
`--smollm2` adds a real LLM against the strongest configuration a user would pick instead: TRL's
`SFTTrainer` (packing with best-fit decreasing, padding-free rows, completion-only loss, its fused
LM head) on SmolLM2-135M-Instruct with the same LoRA model, support-assistant data, learning-rate
schedule and packed rows per step. TRL is a benchmark-only dependency:
`pip install --no-deps -r benchmarks/requirements-trl.txt`.
Last line: one JSON object with both rates, both eval losses and `classification_speedup`,
`causal_lm_speedup` (and `smollm2_vs_trl_speedup`). Targets: >= 3x, >= 2x and >= 1.2x at an equal
eval loss within noise.

    python benchmarks/train_throughput.py [--examples 2000] [--epochs 2] [--smollm2 256] [--only-smollm2]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BANKING77 = ROOT.parent / "shared" / "data" / "banking77" / "train.csv"


def params_for(tmp: Path, task: str, **train):
    from pipelines.core.config import parse_params

    return parse_params({"data": {"task": task}, "prepare": {"output_dir": str(tmp / "prepared")},
                         "train": {"output_dir": str(tmp / "model"), "checkpoint_dir": str(tmp / "ckpt"),
                                   "report_dir": str(tmp / "reports"), "log_every": 1000,
                                   "checkpoint_every": 100000, **train}})


def write_prepared(tmp: Path, train_rows: pd.DataFrame, val_rows: pd.DataFrame, label_map=None) -> None:
    (tmp / "prepared").mkdir(parents=True, exist_ok=True)
    train_rows.to_parquet(tmp / "prepared" / "train.parquet", index=False)
    val_rows.to_parquet(tmp / "prepared" / "validation.parquet", index=False)
    if label_map:
        (tmp / "prepared" / "label_map.json").write_text(json.dumps(label_map))


def naive_run(params, examples, val_examples, collator, labels=None) -> dict:
    """HF Trainer, every example padded to max_length, plain random batches."""
    from transformers import Trainer, TrainingArguments

    from pipelines.inference.predict import mean_loss
    from pipelines.stages.train import seed_everything
    from pipelines.training.modeling import attach_lora, load_base, resolve_base, select_hardware

    tp, task = params.train, params.data.task
    hw = select_hardware()
    seed_everything(tp.seed)
    model = attach_lora(load_base(resolve_base(tp.base_model), task, hw, labels=labels), task, tp.lora)
    steps = math.ceil(len(examples) / tp.batch_size) * tp.epochs
    rows = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels}
            for e in examples]
    args = TrainingArguments(
        output_dir=str(Path(tempfile.mkdtemp())), per_device_train_batch_size=tp.batch_size,
        num_train_epochs=tp.epochs, learning_rate=tp.learning_rate, weight_decay=tp.weight_decay,
        warmup_steps=int(tp.warmup_ratio * steps), lr_scheduler_type="linear", max_grad_norm=tp.max_grad_norm,
        use_cpu=True, report_to=[], save_strategy="no", eval_strategy="no", logging_strategy="no",
        seed=tp.seed, disable_tqdm=True, remove_unused_columns=False)  # no length grouping by default
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
    t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t
    tokens = sum(len(e.input_ids) for e in examples) * tp.epochs
    evals = mean_loss(model, val_examples, task, tp.eval_batch_size, collator.tokenizer.pad_token_id, hw.device)
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "eval_loss": evals["eval_loss"]}


def ours_run(params) -> dict:
    from pipelines.stages.train import train

    m = train(params, resume=False).metrics
    return {"tokens_per_s": m["train_tokens"] / m["train_loop_seconds"], "seconds": m["train_loop_seconds"],
            "eval_loss": m["eval_loss"]}


def classification(n: int, epochs: int) -> dict:
    from transformers import DataCollatorWithPadding

    from pipelines.training.batching import encode_classification
    from pipelines.training.modeling import load_tokenizer, resolve_base

    frame = pd.read_csv(BANKING77).rename(columns={"category": "label"})
    frame = frame.sample(n + n // 5, random_state=0)
    val, trn = frame.iloc[: n // 5], frame.iloc[n // 5:]
    labels = sorted(frame["label"].unique())
    label_map = {lab: i for i, lab in enumerate(labels)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_prepared(tmp, trn, val, label_map)
        params = params_for(tmp, "classification", max_length=128, epochs=epochs, batch_size=32)
        ours = ours_run(params)
        tok = load_tokenizer(resolve_base("minilm"))
        enc = [encode_classification(f["text"].tolist(), f["label"].map(label_map).tolist(), tok, 128)
               for f in (trn, val)]
        naive = naive_run(params, enc[0], enc[1],
                          DataCollatorWithPadding(tok, padding="max_length", max_length=128), labels)
    return {"ours": ours, "naive": naive}


def instruction_set(n: int, rng: np.random.Generator) -> pd.DataFrame:
    words = [f"w{i}" for i in range(400)]
    rows = []
    for _ in range(n):
        k = int(np.exp(rng.uniform(np.log(3), np.log(150))))
        prompt = rng.choice(words, size=k).tolist()
        rows.append({"prompt": "reverse: " + " ".join(prompt),
                     "response": " ".join(reversed(prompt[: max(2, k // 3)]))})
    return pd.DataFrame(rows)


def build_tiny_llama(path: Path, corpus: list[str]) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "<s>", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="<s>",
                                  eos_token="</s>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                         initializer_range=0.2, pad_token_id=tok.pad_token_id,
                                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id))
    model.save_pretrained(str(path), safe_serialization=True)
    tok.save_pretrained(str(path))
    return path


def causal_lm(n: int, epochs: int) -> dict:
    from transformers import DataCollatorForSeq2Seq

    from pipelines.training import batching
    from pipelines.training.modeling import load_tokenizer

    max_length, batch = 256, 16
    rng = np.random.default_rng(0)
    trn, val = instruction_set(n, rng), instruction_set(n // 5, rng)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = build_tiny_llama(tmp / "base", [" ".join(f"w{i}" for i in range(400)), "reverse : user assistant"])
        write_prepared(tmp, trn, val)
        tok = load_tokenizer(base)
        batching.ensure_chat_template(tok)
        enc = [batching.encode_sft_rows(f.to_dict("records"), tok, max_length)[0] for f in (trn, val)]
        mean_len = np.mean([len(e.input_ids) for e in enc[0]])
        rows_per_batch = max(1, round(batch * mean_len / (0.95 * max_length)))  # ~same examples per step
        ours = ours_run(params_for(tmp, "causal_lm", base_model=str(base), max_length=max_length, epochs=epochs,
                                   batch_size=rows_per_batch, learning_rate=0.003))
        naive = naive_run(params_for(tmp, "causal_lm", base_model=str(base), max_length=max_length, epochs=epochs,
                                     batch_size=batch, learning_rate=0.003), enc[0], enc[1],
                          DataCollatorForSeq2Seq(tok, padding="max_length", max_length=max_length,
                                                 label_pad_token_id=batching.IGNORE))
    return {"ours": ours, "naive": naive, "mean_tokens": round(float(mean_len), 1),
            "rows_per_step": rows_per_batch, "examples_per_step_naive": batch}


def require_trl() -> None:
    """Fail before any training when the baseline cannot run."""
    import importlib.util

    if importlib.util.find_spec("trl") is None or importlib.util.find_spec("datasets") is None:
        sys.exit("error: TRL is not installed (a benchmark-only dependency): "
                 "pip install --no-deps -r benchmarks/requirements-trl.txt")


def trl_run(params, model_dir: Path, train_rows: pd.DataFrame, val_examples) -> dict:
    """TRL's SFTTrainer on the same LoRA model and schedule: conversational prompt/completion rows,
    BFD packing into rows of max_length (padding-free), loss on the completions only."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from pipelines.inference.predict import mean_loss
    from pipelines.stages.train import seed_everything
    from pipelines.training.modeling import attach_lora, load_base, load_tokenizer, select_hardware

    tp, hw = params.train, select_hardware()
    tok = load_tokenizer(model_dir)
    seed_everything(tp.seed)
    model = attach_lora(load_base(model_dir, "causal_lm", hw), "causal_lm", tp.lora)
    rows = Dataset.from_list([{"prompt": [{"role": "user", "content": r.prompt}],
                               "completion": [{"role": "assistant", "content": r.response}]}
                              for r in train_rows.itertuples()])
    args = SFTConfig(
        output_dir=str(Path(tempfile.mkdtemp())), max_length=tp.max_length, packing=True, packing_strategy="bfd",
        padding_free=True, completion_only_loss=True, per_device_train_batch_size=tp.batch_size,
        num_train_epochs=tp.epochs, learning_rate=tp.learning_rate, weight_decay=tp.weight_decay,
        warmup_steps=tp.warmup_ratio, lr_scheduler_type="linear", max_grad_norm=tp.max_grad_norm, use_cpu=True,
        report_to=[], save_strategy="no", eval_strategy="no", logging_strategy="no", seed=tp.seed,
        disable_tqdm=True, dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tok)
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"]) * tp.epochs
    t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t
    evals = mean_loss(model, val_examples, "causal_lm", tp.eval_batch_size, tok.pad_token_id, hw.device)
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "eval_loss": evals["eval_loss"],
            "optimizer_steps": trainer.state.global_step}


def smollm2(n: int) -> dict:
    """Ours vs TRL's SFTTrainer on SmolLM2-135M-Instruct, support-assistant data, one epoch."""
    from pipelines.devtools.sample_data import generate_assistant
    from pipelines.training import batching
    from pipelines.training.modeling import load_tokenizer, resolve_base

    max_length, rows_per_step = 512, 2  # ~4 answers of ~120 tokens per packed row: ~8 examples per step
    trn, val = generate_assistant(n, seed=1), generate_assistant(max(16, n // 8), seed=2)
    base = resolve_base("smollm2")
    tok = load_tokenizer(base)
    val_examples = batching.encode_sft_rows(val.to_dict("records"), tok, max_length)[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_prepared(tmp, trn, val)
        params = params_for(tmp, "causal_lm", base_model="smollm2", max_length=max_length, epochs=1,
                            batch_size=rows_per_step, eval_batch_size=16, learning_rate=0.002, warmup_ratio=0.06)
        ours = ours_run(params)
        trl = trl_run(params, base, trn, val_examples)
    return {"ours": ours, "trl": trl, "examples": n, "packed_row_tokens": max_length, "rows_per_step": rows_per_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--smollm2", type=int, default=0, metavar="N",
                        help="also train SmolLM2 on N support-assistant answers against TRL's SFTTrainer")
    parser.add_argument("--only-smollm2", action="store_true", help="skip the classification and tiny-Llama runs")
    args = parser.parse_args()
    r = lambda x: round(x, 4)  # noqa: E731
    out = {}
    if args.smollm2 or args.only_smollm2:
        require_trl()
        sm = smollm2(args.smollm2 or 256)
        print(f"smollm2: {json.dumps(sm)}", file=sys.stderr)
        out = {"smollm2_tokens_per_s": r(sm["ours"]["tokens_per_s"]), "smollm2_trl_tokens_per_s": r(sm["trl"]["tokens_per_s"]),
               "smollm2_eval_loss": r(sm["ours"]["eval_loss"]), "smollm2_trl_eval_loss": r(sm["trl"]["eval_loss"]),
               "smollm2_vs_trl_speedup": r(sm["ours"]["tokens_per_s"] / sm["trl"]["tokens_per_s"])}
    if args.only_smollm2:
        print(json.dumps(out))
        return
    if not BANKING77.exists():
        sys.exit(f"error: {BANKING77} not found (the benchmark reads banking77 from ../shared/data)")
    cls = classification(args.examples, args.epochs)
    print(f"classification: {json.dumps(cls)}", file=sys.stderr)
    clm = causal_lm(args.examples, args.epochs)
    print(f"causal_lm: {json.dumps(clm)}", file=sys.stderr)
    print(json.dumps({
        "classification_tokens_per_s": r(cls["ours"]["tokens_per_s"]),
        "classification_naive_tokens_per_s": r(cls["naive"]["tokens_per_s"]),
        "classification_eval_loss": r(cls["ours"]["eval_loss"]),
        "classification_naive_eval_loss": r(cls["naive"]["eval_loss"]),
        "classification_speedup": r(cls["ours"]["tokens_per_s"] / cls["naive"]["tokens_per_s"]),
        "causal_lm_tokens_per_s": r(clm["ours"]["tokens_per_s"]),
        "causal_lm_naive_tokens_per_s": r(clm["naive"]["tokens_per_s"]),
        "causal_lm_eval_loss": r(clm["ours"]["eval_loss"]),
        "causal_lm_naive_eval_loss": r(clm["naive"]["eval_loss"]),
        "causal_lm_speedup": r(clm["ours"]["tokens_per_s"] / clm["naive"]["tokens_per_s"]),
        **out,
    }))


if __name__ == "__main__":
    main()
