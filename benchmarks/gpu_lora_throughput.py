"""LoRA training throughput of a Llama-3-8B-shaped model on one GPU, variant by variant.

A random-initialised Llama-3-8B configuration (hidden 4096, 32 layers, 32 heads / 8 KV heads,
intermediate 14336, vocab 128256; no weights needed) in bf16, LoRA r=16 on every linear layer of
attention and MLP through this project's `attach_lora`, `collate_packed` and `train_step`, rows of
4096 tokens packed (first-fit decreasing, `packed_batches`) from documents of lognormal length
(mean ~600), half of each document a prompt without labels. Variants (the table VARIANTS):
- baseline: the path before this change: a dense W x W float mask built on the host per batch,
  sdpa, logits and a float32 loss over every position, LoRA dropout 0.05 with peft's fp32 input
  casts, unfused AdamW, a host sync (`loss.item()`) every step;
- padfree_sdpa: packed rows with position ids only (transformers builds the mask on the device);
- dense_sdpa_memory / padfree_sdpa_memory: + LoRA dropout 0 without input casts, logits only at
  labelled positions (chunked, recomputed in backward), fused AdamW, no per-step sync (the second is
  what `pipelines train` does by default);
- flex_memory: the same with flex attention (block-sparse: masked blocks between documents skipped);
- *_compile: + regional `torch.compile` of each decoder layer;
- *_liger: + Liger kernels (RMSNorm, SwiGLU, RoPE; `train.kernels: liger`) when liger-kernel is installed.
Each variant's loss and LoRA gradients on one fixed batch (dropout off) are compared with the same
computed in float32; a variant further off than twice the baseline's own bf16 error (or a fixed
floor) is marked invalid and never reported as faster. Per variant: real (non-padding) tokens/s, MFU = (4 N + attention) FLOPs per token against
989 TFLOP/s (H100 SXM bf16 dense) and against an 8192^3 bf16 matmul timed in this run, peak memory.
Then a tiny `pipelines train` runs end to end on the device and its recorded device/dtype are checked.
Last line: one JSON object. Anchor: NeMo AutoModel's 12,473 tokens/s on one H100; target >= 12.5k.

    python benchmarks/gpu_lora_throughput.py            # on a GPU (about 3 minutes on an H200)
    python benchmarks/gpu_lora_throughput.py --smoke    # the same code on CPU, tiny model (CI)
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLAMA3_8B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                 intermediate_size=14336, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=512, max_position_embeddings=512)
H100_BF16_DENSE = 989e12
ANCHOR_TOKENS_PER_S = 12473  # NeMo AutoModel, Llama-3-8B LoRA, 1 x H100, bf16, seq 4096
TARGET_TOKENS_PER_S = 12500


@dataclass(frozen=True)
class Variant:
    name: str
    attn: str = "sdpa"
    dense_mask: bool = False  # the old host-built W x W float mask
    dropout: float = 0.05
    labelled_only: bool = False
    fused_adamw: bool = False
    cast_inputs: bool = True  # peft's fp32 cast of every LoRA input
    sync_every_step: bool = True
    liger: bool = False
    compile: bool = False

    @property
    def needs_cuda(self) -> bool:  # flex has no CPU backward; inductor on CPU needs a C++ toolchain
        return self.attn == "flex_attention" or self.compile or self.liger


MEMORY = dict(dropout=0.0, labelled_only=True, fused_adamw=True, cast_inputs=False, sync_every_step=False)
VARIANTS = [  # liger patches the base model for good: its variants come last
    Variant("baseline", dense_mask=True),
    Variant("padfree_sdpa"),
    Variant("dense_sdpa_memory", dense_mask=True, **MEMORY),
    Variant("padfree_sdpa_memory", **MEMORY),
    Variant("padfree_sdpa_memory_compile", compile=True, **MEMORY),
    Variant("flex_memory", attn="flex_attention", **MEMORY),
    Variant("flex_memory_compile", attn="flex_attention", compile=True, **MEMORY),
    Variant("padfree_sdpa_memory_liger", liger=True, **MEMORY),
    Variant("flex_memory_liger", attn="flex_attention", liger=True, **MEMORY),
]


def documents(rng, n_tokens: int, mean: float, row: int, vocab: int) -> list:
    """Random-token documents of lognormal length; the first half of each is an unlabelled prompt."""
    from pipelines.training.batching import IGNORE, Example

    sigma = 0.8
    mu = np.log(mean) - sigma ** 2 / 2
    docs, total = [], 0
    while total < n_tokens:
        n = int(np.clip(rng.lognormal(mu, sigma), 16, row))
        ids = rng.integers(4, vocab, n).tolist()
        docs.append(Example(ids, [IGNORE] * (n // 2) + ids[n // 2:]))
        total += n
    return docs


def packed_rows(docs: list, row: int, rows_per_step: int, seed: int) -> list:
    from pipelines.training.batching import packed_batches

    plan = packed_batches([len(d.input_ids) for d in docs], row, rows_per_step, seed)
    return [[[docs[i] for i in r] for r in step] for step in plan if len(step) == rows_per_step]


def dense_block_mask(position_ids, dtype):
    """The old collate's mask: each token sees earlier tokens of its own document (host, W x W)."""
    import torch

    b, width = position_ids.shape
    segment = torch.cumsum(position_ids == 0, dim=1)
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    allowed = (segment[:, :, None] == segment[:, None, :]) & causal
    return torch.zeros((b, 1, width, width), dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def collate(step_rows: list, variant: Variant, width: int, dtype) -> dict:
    from pipelines.training.batching import collate_packed

    batch = collate_packed(step_rows, pad_id=0, width=width)
    if variant.dense_mask:
        batch["attention_mask"] = dense_block_mask(batch["position_ids"], dtype)
    return batch


def model_flops_per_token(cfg: dict) -> float:
    """4 N: forward 2N plus the input gradients 2N (frozen weights get no weight gradient)."""
    h, i, layers, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = h * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i
    return 4.0 * (layers * per_layer + h * v)


def attention_flops(rows: list, cfg: dict) -> float:
    """Causal attention within each document: QK^T and PV, forward 4 d per pair, x3 with backward."""
    pairs = sum(len(e.input_ids) * (len(e.input_ids) + 1) / 2 for row in rows for e in row)
    return 3 * 4 * cfg["hidden_size"] * cfg["num_hidden_layers"] * pairs


def matmul_tflops(device: str) -> float | None:
    import torch

    if device != "cuda":
        return None
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * 8192 ** 3 * 20 / (start.elapsed_time(end) / 1000) / 1e12


def build_base(cfg: dict, device: str, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(LlamaConfig(**cfg), dtype=dtype, attn_implementation="sdpa")
    return model


def attach(base, variant: Variant):
    import torch

    from pipelines.core.config import LoraParams
    from pipelines.training.modeling import apply_kernels, attach_lora

    base.set_attn_implementation(variant.attn)
    if variant.liger:
        apply_kernels(base, "liger")
    torch.manual_seed(1)
    model = attach_lora(base, "causal_lm", LoraParams(r=16, alpha=32, dropout=variant.dropout))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; perturb it (seeded) so every LoRA gradient is compared
            with torch.no_grad():
                param.normal_(std=1e-3, generator=torch.Generator(param.device).manual_seed(len(name)))
    if variant.compile:
        for layer in model.get_base_model().model.layers:
            layer.compile(dynamic=False)
    return model


def detach(model):
    for layer in model.get_base_model().model.layers:
        layer._compiled_call_impl = None
    return model.unload()


def reference(model, batch: dict, variant: Variant, device: str, dtype) -> tuple[float, object]:
    """Loss and LoRA gradients on one batch with dropout off (eval mode; train mode when the variant has
    no dropout, so a compiled variant does not compile twice)."""
    import torch
    from peft.helpers import disable_input_dtype_casting

    from pipelines.training.step import StepConfig, items, loss_sum, to_device

    cfg = StepConfig(False, device, dtype, 1.0, variant.labelled_only)
    model.train(variant.dropout == 0)
    b = to_device({k: v for k, v in batch.items() if k != "num_tokens"}, device)
    with disable_input_dtype_casting(model, active=not variant.cast_inputs), \
            torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        loss = loss_sum(model, b, cfg) / items(b, False)
    loss.backward()
    grads = torch.cat([p.grad.float().flatten() for n, p in sorted(model.named_parameters()) if p.requires_grad])
    model.zero_grad(set_to_none=True)
    model.train()
    return float(loss), grads


def fp32_reference(base, fixed_rows: list, args):
    """Loss and LoRA gradients of the fixed batch in float32 (the bf16 weights upcast, which is exact):
    what every variant's bf16 result is measured against."""
    import torch

    variant = Variant("fp32_reference", dropout=0.0, cast_inputs=False)
    base.float()
    model = attach(base, variant)
    try:
        return reference(model, collate(fixed_rows, variant, args.width, torch.float32), variant, args.device,
                         torch.float32)
    finally:
        detach(model)
        base.to(args.dtype)


def run_variant(base, variant: Variant, steps_rows: list, fixed_rows: list, args, cfg: dict, ref) -> dict:
    import torch
    from peft.helpers import disable_input_dtype_casting

    from pipelines.training.step import StepConfig, make_optimizer, train_step

    device, dtype = args.device, args.dtype
    model = attach(base, variant)
    try:
        loss, grads = reference(model, collate(fixed_rows, variant, args.width, dtype), variant, device, dtype)
        check = {"loss": loss, "loss_rel_err": abs(loss - ref[0]) / abs(ref[0]),
                 "grad_rel_err": float((grads - ref[1]).norm() / ref[1].norm())}
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = (make_optimizer(trainable, 1e-4, 0.0, device) if variant.fused_adamw
               else torch.optim.AdamW(trainable, lr=1e-4))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        step_cfg = StepConfig(False, device, dtype, 1.0, variant.labelled_only)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def one(rows):
            micro = [collate(rows, variant, args.width, dtype)]
            n = micro[0].pop("num_tokens")
            with disable_input_dtype_casting(model, active=not variant.cast_inputs):
                loss = train_step(model, micro, opt, sched, step_cfg, trainable)
            if variant.sync_every_step:
                loss.item()
            return n

        for rows in steps_rows[:args.warmup]:
            one(rows)
        sync(device)
        t0, tokens, attn = time.perf_counter(), 0, 0.0
        timed = steps_rows[args.warmup:args.warmup + args.steps]
        for rows in timed:
            tokens += one(rows)
            attn += attention_flops(rows, cfg)
        sync(device)
        seconds = time.perf_counter() - t0
        flops = model_flops_per_token(cfg) * tokens + attn
        out = {"status": "ok", "tokens_per_s": tokens / seconds, "achieved_tflops": flops / seconds / 1e12,
               "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None, **check}
        return out
    finally:
        detach(model)  # the same base object, LoRA layers removed, for the next variant
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def check_train_stage(device: str) -> dict:
    """A tiny `pipelines train` end to end on this device; its recorded device and dtype."""
    import pandas as pd

    from pipelines.core.config import parse_params
    from pipelines.inference.predict import generate_many
    from pipelines.stages.train import train
    from pipelines.training.modeling import load_trained
    from tests.tiny_models import build_causal

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = build_causal("llama", tmp / "base", hidden_size=128)  # head dim 32: flex attention's minimum is 16
        rows = pd.DataFrame({"prompt": [f"what is {i} plus {i}?" for i in range(40)],
                             "response": [f"it is {2 * i}." for i in range(40)]})
        (tmp / "prepared").mkdir()
        rows.iloc[:32].to_parquet(tmp / "prepared" / "train.parquet")
        rows.iloc[32:].to_parquet(tmp / "prepared" / "validation.parquet")
        params = parse_params({"data": {"task": "causal_lm"}, "prepare": {"output_dir": str(tmp / "prepared")},
                               "train": {"base_model": str(base), "output_dir": str(tmp / "model"),
                                         "checkpoint_dir": str(tmp / "ckpt"), "report_dir": str(tmp / "rep"),
                                         "max_length": 64, "batch_size": 4, "max_steps": 6, "log_every": 3}})
        result = train(params)
        config = json.loads((tmp / "model" / "train_config.json").read_text())
        hw = config["hardware"]
        expected = "bfloat16" if device == "cuda" else "float32"
        # evaluation's path: the trained adapter reloaded on this device in that dtype, batched answers
        model, tok = load_trained(tmp / "model", device, expected)
        answers = generate_many(model, tok, [[{"role": "user", "content": f"what is {i} plus {i}?"}] for i in (1, 2)],
                                8, 2)
        eval_device = str(next(model.parameters()).device).split(":")[0]
    return {"device": hw["device"], "dtype": hw["dtype"], "name": hw["name"], "steps": result.metrics["steps"],
            "eval_device": eval_device, "answers": len(answers),
            "ok": hw["device"] == device and hw["dtype"] == expected and result.metrics["steps"] == 6
            and eval_device == device and len(answers) == 2}


def tolerances(device: str) -> tuple[float, float]:
    """Errors against float32 that always pass: bf16 on a GPU, float32 on CPU (a variant may also be as
    far off as twice the baseline's own error)."""
    return (1e-3, 2e-2) if device == "cuda" else (1e-5, 1e-4)


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU (what CI runs)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--rows", type=int, default=1, help="packed rows per step")
    parser.add_argument("--only", default=None, help="comma-separated variant names")
    parser.add_argument("--json-out", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    args.device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    args.dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    cfg = TINY if args.smoke else LLAMA3_8B
    args.width, mean = (256, 40) if args.smoke else (4096, 600)
    args.steps = args.steps or (2 if args.smoke else 8)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    if args.device == "cpu":
        torch.set_num_threads(max(torch.get_num_threads(), 1))
    rng = np.random.default_rng(0)
    need = (args.steps + args.warmup + 1) * args.rows * args.width
    steps_rows = packed_rows(documents(rng, int(need * 1.1), mean, args.width, cfg["vocab_size"]),
                             args.width, args.rows, seed=0)
    fixed_rows, steps_rows = steps_rows[0], steps_rows[1:]
    result = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
              "torch": torch.__version__, "config": "tiny" if args.smoke else "llama3-8b",
              "row_tokens": args.width, "rows_per_step": args.rows, "timed_steps": args.steps,
              "matmul_tflops": matmul_tflops(args.device), "variants": {}}
    fill = sum(len(e.input_ids) for r in steps_rows for row in r for e in row) / (len(steps_rows) * args.rows * args.width)
    result["packing_fill"] = round(fill, 4)
    result["train_stage"] = check_train_stage(args.device)
    print(f"train stage: {result['train_stage']}", file=sys.stderr, flush=True)
    torch.use_deterministic_algorithms(False)  # the stage's default (train.deterministic) is not timed here
    base = build_base(cfg, args.device, args.dtype)
    wanted = set(args.only.split(",")) if args.only else None
    ref = fp32_reference(base, fixed_rows, args)
    floor, (tol_loss, tol_grad) = None, tolerances(args.device)
    for variant in VARIANTS:
        if wanted and variant.name not in wanted:
            continue
        if variant.needs_cuda and args.device != "cuda":
            result["variants"][variant.name] = {"status": "skipped", "why": "needs CUDA"}
            continue
        if variant.liger and not _has("liger_kernel"):
            result["variants"][variant.name] = {"status": "skipped", "why": "liger-kernel not installed"}
            continue
        try:
            out = run_variant(base, variant, steps_rows, fixed_rows, args, cfg, ref)
            floor = floor or (out["loss_rel_err"], out["grad_rel_err"])  # the baseline's own rounding error
            if (out["loss_rel_err"] > max(2 * floor[0], tol_loss)
                    or out["grad_rel_err"] > max(2 * floor[1], tol_grad)):
                out["status"] = "invalid"
        except torch.OutOfMemoryError:
            out = {"status": "out of memory"}
        except Exception as err:  # a variant that breaks is reported, the others still run
            out = {"status": "error", "why": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
            traceback.print_exc(file=sys.stderr)
        if out.get("tokens_per_s"):
            out["mfu_vs_989"] = out["achieved_tflops"] * 1e12 / H100_BF16_DENSE
            if result["matmul_tflops"]:
                out["mfu_vs_matmul"] = out["achieved_tflops"] / result["matmul_tflops"]
        result["variants"][variant.name] = _rounded(out)
        print(f"{variant.name:28s} {json.dumps(result['variants'][variant.name])}", file=sys.stderr, flush=True)
        if args.json_out:  # what ran so far survives a time limit
            Path(args.json_out).write_text(json.dumps(result, indent=2))
    del base
    ok = {k: v for k, v in result["variants"].items() if v["status"] == "ok"}
    best = max(ok, key=lambda k: ok[k]["tokens_per_s"]) if ok else None
    result.update(best=best, best_tokens_per_s=ok[best]["tokens_per_s"] if best else None,
                  anchor_tokens_per_s=ANCHOR_TOKENS_PER_S, target_tokens_per_s=TARGET_TOKENS_PER_S,
                  speedup_vs_baseline=(ok[best]["tokens_per_s"] / ok["baseline"]["tokens_per_s"]
                                       if best and "baseline" in ok else None))
    print_table(result)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0 if ok and result["train_stage"]["ok"] else 1


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _rounded(out: dict) -> dict:
    return {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in out.items()}


def print_table(result: dict) -> None:
    print(f"\n{result['config']} on {result['device']} (bf16 matmul {result['matmul_tflops'] or 0:.0f} TFLOP/s), "
          f"rows of {result['row_tokens']} tokens, fill {result['packing_fill']:.1%}", file=sys.stderr)
    print(f"{'variant':28s} {'status':14s} {'tok/s':>9s} {'MFU/989':>8s} {'peak GiB':>9s} {'loss err':>9s} "
          f"{'grad err':>9s}", file=sys.stderr)
    for name, v in result["variants"].items():
        def f(key, fmt):
            return format(v[key], fmt) if v.get(key) is not None else format("-", ">" + fmt[:-3].split(".")[0])
        print(f"{name:28s} {v['status']:14s} {f('tokens_per_s', '9.0f')} {f('mfu_vs_989', '8.1%')} "
              f"{f('peak_gib', '9.1f')} {f('loss_rel_err', '9.1e')} {f('grad_rel_err', '9.1e')}", file=sys.stderr)
    print(f"train stage on {result['train_stage']['device']}: {result['train_stage']}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
