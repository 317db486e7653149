"""One optimiser step of LoRA training: micro-batches, the loss, accumulation.

Inputs: the peft model, the collated micro-batches of one step (host tensors), the optimiser,
scheduler and precision. Outputs: the step's mean loss as a device tensor (read it only when
logging: no host sync per step). Every micro-batch contributes the *sum* of its loss over its
items (examples for classification, labelled tokens for causal LMs) divided by the items of the
whole step, so any split of a step (gradient accumulation, token budget, ranks) computes the same
gradient as one big batch.

Causal LMs with `labelled_logits_only`: the vocabulary projection runs only on the positions whose
next token is labelled, in chunks recomputed in the backward pass, so neither the prompt tokens'
logits nor a float32 copy of a whole batch's logits (about 5 GB per 4096-token row at a 128k
vocabulary) is ever held.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines.training.batching import IGNORE
from pipelines.training.distributed import SINGLE, Dist, sharded, sum_gradients

LOGITS_CHUNK = 1024  # labelled positions per chunk of the vocabulary projection
_SCALED_LOGITS = ("final_logit_softcapping", "logit_scale", "logits_scaling")  # not a plain lm_head


@dataclass(frozen=True)
class StepConfig:
    labelled: bool  # classification (one label per example) or causal LM
    device: str
    dtype: Any  # torch dtype of autocast; float32 = no autocast
    max_grad_norm: float
    labelled_logits_only: bool = True
    dist: Dist = SINGLE  # the ranks this step is spread over


def items(batch: dict, labelled: bool) -> int:
    """What the loss averages over: examples, or tokens whose next token carries a label."""
    if labelled:
        return int(batch["labels"].shape[0])
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def _chunked_ok(model) -> bool:
    """The decoder and the head can be called apart: a plain head, and no FSDP (whose root forward
    gathers the parameters that calling the decoder directly would find still sharded)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return (not sharded(model) and hasattr(base, "get_decoder") and base.get_output_embeddings() is not None
            and not any(getattr(base.config, k, None) for k in _SCALED_LOGITS))


def _ce_sum(head, hidden, targets):
    import torch.nn.functional as F

    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def labelled_logits_loss(model, batch: dict):
    """Sum of next-token cross-entropy over labelled positions, computing logits only there."""
    import torch
    from torch.utils.checkpoint import checkpoint

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    hidden, targets = hidden[:, :-1][keep], targets[keep]
    head = base.get_output_embeddings()
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, targets.shape[0], LOGITS_CHUNK):
        total = total + checkpoint(_ce_sum, head, hidden[i:i + LOGITS_CHUNK], targets[i:i + LOGITS_CHUNK],
                                   use_reentrant=False)
    return total


def loss_sum(model, batch: dict, cfg: StepConfig):
    """The loss of one micro-batch summed over its items (see `items`)."""
    if cfg.labelled:
        return model(**batch).loss * items(batch, True)
    if cfg.labelled_logits_only and _chunked_ok(model):
        return labelled_logits_loss(model, batch)
    # no cache: with one, transformers would not derive the packed examples' mask from position ids
    return model(**batch, use_cache=False).loss * items(batch, False)


def to_device(batch: dict, device: str) -> dict:
    """Host tensors to the device; pinned and non-blocking on CUDA so the copy overlaps compute."""
    if device == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}


def train_step(model, micro_batches: list[dict], optimizer, scheduler, cfg: StepConfig,
               trainable: list, scaler=None, step_items: int | None = None, fillers: int = 0):
    """Forward/backward every micro-batch, sum gradients across ranks, then one clipped optimiser step.
    `step_items`: the loss items of the whole step over all ranks (default: those of `micro_batches`);
    the last `fillers` micro-batches only keep a sharded model's ranks in step (zero weight).
    Returns the step's mean loss (a device tensor)."""
    import torch

    real = micro_batches[:len(micro_batches) - fillers]
    scale = cfg.dist.world if sharded(model) else 1  # FSDP averages gradients over ranks; we sum
    total_items = max(step_items or sum(items(mb, cfg.labelled) for mb in real), 1)
    step_loss = torch.zeros((), device=cfg.device)
    for i, mb in enumerate(micro_batches):
        mb = to_device(mb, cfg.device)
        weight = 0.0 if i >= len(real) else scale / total_items
        with torch.autocast(cfg.device, dtype=cfg.dtype, enabled=cfg.dtype != torch.float32):
            loss = loss_sum(model, mb, cfg) * weight
        (scaler.scale(loss) if scaler else loss).backward()
        step_loss += loss.detach() / scale
    sum_gradients(trainable, step_loss, cfg.dist, grads_too=not sharded(model))
    if scaler:
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss


def make_optimizer(trainable: list, lr: float, weight_decay: float, device: str):
    """AdamW; the fused CUDA kernel on a GPU (one launch for every LoRA tensor)."""
    import torch

    return torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay, fused=device == "cuda" or None)
