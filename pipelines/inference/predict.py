"""The one inference path: what `evaluate` measures is what serving answers with.

Inputs: a loaded model and tokenizer (`training.modeling.load_trained`), texts or chat messages.
Outputs: class probabilities (`classify`), a greedy completion with its token counts (`generate`)
and the mean loss of a split (`mean_loss`, used by `train` for validation and by `evaluate`).
The gate therefore certifies exactly the code that `pipelines serve` runs; nothing here knows
about HTTP, the registry or params files.
"""
from __future__ import annotations

import math
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from pipelines.tasks import task_spec
from pipelines.training import batching


def classify(model, tok, texts: list[str], max_length: int, batch_size: int | None = None) -> np.ndarray:
    """Class probabilities, one row per text: `batch_size` texts per forward pass (all at once if None)."""
    import torch

    step = batch_size or max(1, len(texts))
    probs = []
    with torch.no_grad():
        for i in range(0, len(texts), step):
            chunk = texts[i:i + step]
            batch = batching.collate_classification(
                batching.encode_classification(chunk, [0] * len(chunk), tok, max_length), tok.pad_token_id)
            device = _device(model)
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
            probs.append(torch.softmax(logits.float(), -1).cpu().numpy())
    return np.concatenate(probs) if probs else np.zeros((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens: greedy at temperature 0 (what evaluation measures), else nucleus sampling,
    reproducible with a seed; generation also ends at the first of the `stop` strings (not returned)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


GREEDY = Sampling()


_SEEDED = threading.Lock()  # a seeded request owns torch's (process-wide) generator while it samples


def _stopping(tok, stops: tuple[str, ...], prompt_len: int, cancel: threading.Event | None):
    """Stop at the first `stops` string in the decoded answer, or as soon as `cancel` is set (a client
    that went away: no tokens computed for nobody)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnText(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            if cancel is not None and cancel.is_set():
                return True
            if not stops:
                return False
            text = tok.decode(input_ids[0, prompt_len:], skip_special_tokens=True)
            return any(stop in text for stop in stops)

    return StoppingCriteriaList([StopOnText()])


def generate(model, tok, messages: list[dict] | None, max_new_tokens: int, prompt: str | None = None,
             streamer=None, sampling: Sampling = GREEDY, cancel: threading.Event | None = None) -> tuple[str, int, int]:
    """Completion of a chat (rendered by the tokenizer's template) or of a raw `prompt`, ended early
    when `cancel` is set; returns (text, prompt_tokens, completion_tokens)."""
    import torch

    text = prompt if prompt is not None else tok.apply_chat_template(messages, tokenize=False,
                                                                     add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(_device(model))
    options: dict[str, Any] = {"do_sample": sampling.temperature > 0}
    if sampling.temperature > 0:
        options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    if sampling.stop or cancel is not None:  # decoded text checked each step (stop_strings fails on some tokenizers)
        options["stopping_criteria"] = _stopping(tok, sampling.stop, ids.shape[1], cancel)
    seeded = sampling.seed is not None and sampling.temperature > 0
    with torch.no_grad(), (_SEEDED if seeded else nullcontext()), torch.random.fork_rng(enabled=seeded,
                                                                                         devices=[]):
        if seeded:
            torch.manual_seed(sampling.seed)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, streamer=streamer,
                             **options)
    new = out[0, ids.shape[1]:]
    answer = tok.decode(new, skip_special_tokens=True)
    for stop in sampling.stop:  # OpenAI's contract: the stop sequence itself is not part of the answer
        answer = answer.split(stop, 1)[0]
    return answer, int(ids.shape[1]), int(len(new))


class _Clock:
    """A generate() streamer that only notes when each token arrives (the first call is the prompt)."""

    def __init__(self) -> None:
        import time

        self.now = time.perf_counter
        self.t0, self.stamps = self.now(), []

    def put(self, value) -> None:
        self.stamps.append(self.now())

    def end(self) -> None:
        pass


def timed_generate(model, tok, messages: list[dict], max_new_tokens: int) -> dict[str, float]:
    """One greedy answer, timed: seconds to the first new token (prefill included) and per later token."""
    clock = _Clock()
    _, _, completion = generate(model, tok, messages, max_new_tokens, streamer=clock)
    tokens = clock.stamps[1:]  # stamps[0]: the prompt, handed to the streamer before decoding starts
    ttft = (tokens[0] if tokens else clock.now()) - clock.t0
    per_token = (tokens[-1] - tokens[0]) / (len(tokens) - 1) if len(tokens) > 1 else 0.0
    return {"ttft_s": ttft, "per_token_s": per_token, "tokens": completion}


def failed(streamer: Any, error: BaseException | None = None) -> BaseException | None:
    """A streamer's failure: given `error`, note that its generation failed (before it is ended, so a
    reader that sees the end knows at once); without, the failure noted, if any."""
    if error is not None:
        streamer.failed = error
    return getattr(streamer, "failed", None)


@dataclass
class Ask:
    """One request of a batched greedy generation: a chat (or a raw `prompt`), its own token limit,
    optionally a streamer that receives its tokens and an event that ends it early."""

    messages: list[dict] | None
    max_new_tokens: int
    prompt: str | None = None
    streamer: Any = None
    cancel: threading.Event | None = None


class _Rows:
    """Per-row bookkeeping of one batched `generate`: its stopping criterion (a row ends at its own
    EOS, token limit or cancel event; transformers then pads it while the others go on) and its
    streamer (each row's tokens to that row's streamer, ended once it has all of the row's tokens:
    transformers may hand a token over after the criterion has seen it)."""

    def __init__(self, asks: list[Ask], prompt_width: int, eos: set[int]) -> None:
        self.asks, self.width, self.eos = asks, prompt_width, eos
        self.lengths: list[int | None] = [None] * len(asks)
        self.sent = [0] * len(asks)
        self.closed = [a.streamer is None for a in asks]
        self.prompt_sent = False

    # streamer side
    def put(self, value) -> None:
        if not self.prompt_sent:  # the prompt, which each row's streamer skips
            self.prompt_sent = True
            for i, ask in enumerate(self.asks):
                if not self.closed[i]:
                    ask.streamer.put(value[i:i + 1])
            return
        for i, ask in enumerate(self.asks):
            if self.closed[i]:
                continue
            if self.lengths[i] is None or self.sent[i] < self.lengths[i]:
                ask.streamer.put(value[i:i + 1])
                self.sent[i] += 1
            if self.lengths[i] is not None and self.sent[i] >= self.lengths[i]:
                self._close(i)

    def end(self) -> None:
        for i in range(len(self.asks)):
            self._close(i)

    def fail(self, error: BaseException) -> None:
        """Tell each row still streaming why it ends early (see `failed`)."""
        for i, ask in enumerate(self.asks):
            if not self.closed[i]:
                failed(ask.streamer, error)

    def _close(self, i: int) -> None:
        if not self.closed[i]:
            self.closed[i] = True
            self.asks[i].streamer.end()

    # stopping-criterion side
    def __call__(self, input_ids, scores, **kwargs):
        import torch

        made = input_ids.shape[1] - self.width
        last = input_ids[:, -1].tolist()
        for i, ask in enumerate(self.asks):
            if self.lengths[i] is None and (last[i] in self.eos or made >= ask.max_new_tokens
                                            or (ask.cancel is not None and ask.cancel.is_set())):
                self.lengths[i] = made
        return torch.tensor([n is not None for n in self.lengths], dtype=torch.bool, device=input_ids.device)


class Answer(NamedTuple):
    text: str
    prompt_tokens: int
    completion_tokens: int
    mean_logprob: float  # mean log-probability of the answer's tokens: low = the model was unsure


class _Logprobs:
    """A logits processor that leaves the scores alone and adds up, per unfinished row, the
    log-probability of the token greedy decoding takes (the argmax)."""

    def __init__(self, rows: _Rows) -> None:
        self.rows = rows
        self.sums = [0.0] * len(rows.asks)

    def __call__(self, input_ids, scores):
        import torch

        best = torch.log_softmax(scores.float(), dim=-1).max(dim=-1).values.tolist()
        for i, value in enumerate(best):
            if self.rows.lengths[i] is None:
                self.sums[i] += value
        return scores


def generate_batch(model, tok, asks: list[Ask]) -> list[Answer]:
    """Greedy answers to several requests in one left-padded `generate` (static batching): each row
    ends at its own EOS, `max_new_tokens` or cancel event, and streams to its own streamer. Returns
    (text, prompt_tokens, completion_tokens) per request, in the order given. Serving batches
    concurrent requests through it and `evaluate` answers its test rows through it."""
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    prompts = [tok(a.prompt if a.prompt is not None else
                   tok.apply_chat_template(a.messages, tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False)["input_ids"] for a in asks]
    width = max(len(p) for p in prompts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = _device(model)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    eos = tok.eos_token_id if isinstance(tok.eos_token_id, list) else [tok.eos_token_id]
    rows = _Rows(asks, width, {e for e in eos if e is not None})
    logprobs = _Logprobs(rows)
    streams = any(a.streamer is not None for a in asks)
    try:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(a.max_new_tokens for a in asks),
                                 do_sample=False, pad_token_id=pad, eos_token_id=tok.eos_token_id,
                                 logits_processor=LogitsProcessorList([logprobs]),
                                 stopping_criteria=StoppingCriteriaList([rows]), streamer=rows if streams else None)
    except BaseException as err:
        rows.fail(err)
        raise
    finally:
        rows.end()  # every row's streamer ends, also when generate fails
    answers = []
    for i, prompt in enumerate(prompts):
        new = out[i, width:width + (rows.lengths[i] or 0)]
        answers.append(Answer(tok.decode(new, skip_special_tokens=True), len(prompt), int(len(new)),
                              logprobs.sums[i] / max(int(len(new)), 1)))
    return answers


def generate_many(model, tok, conversations: list[list[dict]], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy answers to many chats, `batch_size` prompts per `generate_batch` (similar lengths
    together); answers come back in the order asked."""
    lengths = [len(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)) for c in conversations]
    order = sorted(range(len(conversations)), key=lambda i: lengths[i])
    answers: list[str] = [""] * len(conversations)
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        done = generate_batch(model, tok, [Ask(conversations[i], max_new_tokens) for i in chosen])
        for i, answer in zip(chosen, done):
            answers[i] = answer.text
    return answers


def sequence_nll(model, tok, conversations: list[list[dict]], max_length: int, batch_size: int = 32) -> list[float]:
    """Summed negative log-likelihood of each chat's assistant turn(s) (nats), in the order given: how
    surprised the model is by an answer (memorisation tests rank a planted secret by it). The tokens
    all chats share at the start are run once and their KV cache reused for every chat, so ranking a
    secret among many alternatives costs only the alternatives' own tokens."""
    import copy

    import torch

    examples = [batching.encode_sft(c, tok, max_length) for c in conversations]
    if any(e is None for e in examples):
        raise ValueError("a conversation has no assistant tokens within max_length")
    shared = _common_prefix([e.input_ids for e in examples])
    device = _device(model)
    out: list[float] = []
    with torch.no_grad():
        prefix = model(input_ids=torch.tensor([shared], device=device), use_cache=True)
        logp_shared = torch.log_softmax(prefix.logits[0].float(), -1)
        first = logp_shared[-1]  # predicts each chat's first own token
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            rest = [e.input_ids[len(shared):] for e in chunk]
            width = max(len(r) for r in rest)
            ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rest], device=device)
            mask = torch.tensor([[1] * (len(shared) + len(r)) + [0] * (width - len(r)) for r in rest], device=device)
            cache = copy.deepcopy(prefix.past_key_values)
            cache.batch_repeat_interleave(len(chunk))
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, cache=cache,
                                           use_cache=True).logits.float(), -1)
            for row, (e, r) in enumerate(zip(chunk, rest)):
                total = sum(-float(logp_shared[t - 1, shared[t]]) for t in range(1, len(shared))
                            if e.labels[t] != batching.IGNORE)  # answer tokens inside the shared prefix
                scored = [j for j, label in enumerate(e.labels[len(shared):]) if label != batching.IGNORE]
                total += sum(-float(first[r[0]]) if j == 0 else -float(logp[row, j - 1, r[j]]) for j in scored)
                out.append(total)
    return out


def _common_prefix(sequences: list[list[int]]) -> list[int]:
    """The tokens every sequence starts with, leaving each at least one token of its own."""
    n = min(len(s) for s in sequences) - 1
    for i in range(n):
        if any(s[i] != sequences[0][i] for s in sequences):
            return sequences[0][:i]
    return sequences[0][:n]


def mean_loss(model, examples: list[Any], task: str, batch_size: int, pad_id: int, device: Any) -> dict[str, float]:
    """Mean loss of encoded examples (per example for classification, per response token for causal
    LMs), batches in length order; plus accuracy (classification) or perplexity (causal LM)."""
    import torch

    if not examples:
        return {}
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    total_loss, weight, correct = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chosen = [examples[i] for i in order[start:start + batch_size]]
            batch = (batching.collate_classification(chosen, pad_id) if task_spec(task).labelled
                     else batching.collate_padded_causal(chosen, pad_id))
            batch.pop("num_tokens")
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            if task_spec(task).labelled:
                n = len(chosen)
                correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
            else:
                n = int((batch["labels"][:, 1:] != batching.IGNORE).sum())
            total_loss += float(out.loss) * n
            weight += n
    model.train(was_training)
    metrics = {"eval_loss": total_loss / max(weight, 1)}
    if task_spec(task).labelled:
        metrics["eval_accuracy"] = correct / len(examples)
    else:
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50))
    return metrics


def _device(model):
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return "cpu"
