"""Turning prepared rows into efficient training batches.

Inputs: tokenised examples (lists of token ids, with labels). Outputs: a deterministic batch
plan per epoch and collated tensors (each batch also says its `num_tokens`, padding excluded).
- classification: length-grouped batches (shuffle, sort within mega-batches, shuffle batches)
  padded only to the longest example of each batch (dynamic padding);
- causal_lm: supervised fine-tuning examples rendered with the tokenizer's chat template (or a
  plain default one), loss only on assistant tokens, and packed several to a row with position
  ids restarting per example and no mask tensor (padding-free): the attention implementation
  keeps every token within its own example.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pipelines.core.errors import InputError

IGNORE = -100
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
MEGA = 50  # batches per sorting window for length grouping
ROW_MULTIPLE = 128  # packed row width on a GPU


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: Any  # int for classification, list[int] (IGNORE where no loss) for causal_lm


def example_items(example: Example, labelled: bool) -> int:
    """What one example adds to the loss's denominator: 1, or its tokens whose next token is labelled."""
    return 1 if labelled else sum(label != IGNORE for label in example.labels[1:])


def encode_classification(texts: Sequence[str], label_ids: Sequence[int], tok, max_length: int) -> list[Example]:
    enc = tok(list(texts), truncation=True, max_length=max_length)
    return [Example(ids, int(y)) for ids, y in zip(enc["input_ids"], label_ids)]


def ensure_chat_template(tok) -> bool:
    """Give the tokenizer a plain chat template if it has none; True when one was added."""
    if getattr(tok, "chat_template", None):
        return False
    tok.chat_template = DEFAULT_CHAT_TEMPLATE
    return True


def to_messages(row: dict) -> list[dict]:
    if "messages" in row and row["messages"] is not None:
        msgs = row["messages"]
        return json.loads(msgs) if isinstance(msgs, str) else list(msgs)
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]


def encode_sft(messages: list[dict], tok, max_length: int) -> Example | None:
    """Render with the chat template; label only the assistant turns. None if nothing is left."""
    text = tok.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        start = len(tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
        end = len(tok.apply_chat_template(messages[: i + 1], tokenize=False))
        spans.append((start, end))
    enc = tok(text, truncation=True, max_length=max_length, add_special_tokens=False,
              return_offsets_mapping=True)
    labels = [tid if any(s <= a < e for s, e in spans) else IGNORE
              for tid, (a, _) in zip(enc["input_ids"], enc["offset_mapping"])]
    if all(label == IGNORE for label in labels[1:]):
        return None
    return Example(enc["input_ids"], labels)


def template_overhead(tok) -> int:
    """Tokens the chat template spends on an empty one-turn exchange."""
    empty = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]
    return len(tok(tok.apply_chat_template(empty, tokenize=False), add_special_tokens=False)["input_ids"])


def encode_sft_rows(rows: list[dict], tok, max_length: int) -> tuple[list[Example], int]:
    overhead = template_overhead(tok)
    if overhead + 2 > max_length:
        raise InputError(f"train.max_length {max_length} is too small for the chat template "
                         f"({overhead} tokens before any content)")
    out, dropped = [], 0
    for row in rows:
        ex = encode_sft(to_messages(row), tok, max_length)
        if ex is None:
            dropped += 1
        else:
            out.append(ex)
    return out, dropped


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, group: bool) -> list[list[int]]:
    """A deterministic batch plan for one epoch (seed already includes the epoch)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    if not group:
        return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    lengths = np.asarray(lengths)
    batches = []
    window = batch_size * MEGA
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def packed_batches(lengths: Sequence[int], max_length: int, rows_per_batch: int, seed: int) -> list[list[list[int]]]:
    """Pack examples into rows of at most max_length tokens (first-fit decreasing in shuffled
    windows), then group rows into batches. Returns batches of rows of example indices."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    lengths = np.asarray(lengths)
    rows: list[list[int]] = []
    window = 256
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window].tolist(), key=lambda i: -lengths[i])
        bins: list[list[int]] = []
        room: list[int] = []
        for i in chunk:
            n = int(lengths[i])
            for b, free in enumerate(room):
                if n <= free:
                    bins[b].append(i)
                    room[b] -= n
                    break
            else:
                bins.append([i])
                room.append(max_length - n)
        rows += bins
    perm = rng.permutation(len(rows))
    rows = [rows[i] for i in perm]
    return [rows[i:i + rows_per_batch] for i in range(0, len(rows), rows_per_batch)]


def collate_classification(examples: list[Example], pad_id: int):
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        ids[r, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[r, : len(e.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask,
            "labels": torch.tensor([e.labels for e in examples], dtype=torch.long),
            "num_tokens": int(mask.sum())}


def collate_padded_causal(examples: list[Example], pad_id: int):
    """One example per row, right-padded (used for evaluation and by the naive baseline)."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e.input_ids)
        ids[r, :n], labels[r, :n], mask[r, :n] = torch.tensor(e.input_ids), torch.tensor(e.labels), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "num_tokens": int(mask.sum())}


def packed_width(max_length: int, fixed: bool) -> int | None:
    """The row width packed batches are padded to: on a GPU a fixed multiple of 128 (one shape, so
    compiled kernels never recompile); elsewhere None (each batch as wide as its longest row)."""
    return -(-max_length // ROW_MULTIPLE) * ROW_MULTIPLE if fixed else None


def collate_packed(rows: list[list[Example]], pad_id: int, width: int | None = None):
    """Rows of packed examples -> ids, labels and per-example position ids, with no attention mask:
    transformers derives the block-diagonal causal mask from where the position ids restart, on the
    device (block-sparse under flex attention), so no W x W mask is built or copied here. A row's
    padded tail is a segment of its own (positions restart at 0) and carries no label."""
    import torch

    longest = max(sum(len(e.input_ids) for e in row) for row in rows)
    width = max(width or 0, longest)
    b = len(rows)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    labels = torch.full((b, width), IGNORE, dtype=torch.long)
    pos = torch.zeros((b, width), dtype=torch.long)
    real = 0
    for r, row in enumerate(rows):
        at = 0
        for e in row:
            n = len(e.input_ids)
            ids[r, at:at + n] = torch.tensor(e.input_ids)
            labels[r, at + 1:at + n] = torch.tensor(e.labels[1:])  # never predict an example's first token
            pos[r, at:at + n] = torch.arange(n)
            at += n
        pos[r, at:] = torch.arange(width - at)
        real += at
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "num_tokens": real}


def split_micro(members: list, widths: Sequence[int], parts: int, max_tokens: int | None) -> list[list]:
    """Split one optimiser step's members (example indices, or packed rows) into `parts` near-equal
    micro-batches in order, then split any micro-batch whose padded size (members x the widest)
    would exceed `max_tokens`. Every member lands in exactly one micro-batch."""
    out: list[list] = []
    for chunk in np.array_split(np.arange(len(members)), min(parts, len(members))):
        current: list = []
        widest = 0
        for i in chunk.tolist():
            wider = max(widest, int(widths[i]))
            if current and max_tokens and wider * (len(current) + 1) > max_tokens:
                out.append(current)
                current, wider = [], int(widths[i])
            current.append(members[i])
            widest = wider
        out.append(current)
    return out
