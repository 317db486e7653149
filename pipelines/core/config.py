"""Typed view of `params.yaml`, the single source of truth for stage configuration.

Inputs: a YAML file (a model folder's `params.yaml`; it must exist) and optional overrides.
Outputs: frozen pydantic models, one per `params.yaml` section. Unknown keys, wrong types
and inconsistent values raise `ConfigError` with a one-line message naming the key.
"""
from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipelines.core.errors import ConfigError

PII_KINDS = ("email", "phone", "card", "iban")
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"  # a registry model name: also a directory name
REASON_MIN_CHARS, REASON_MAX_CHARS = 3, 500  # why a champion moved by hand (ledger `reason`)


def check_model_name(name: str) -> str:
    """A registry model name, checked wherever one enters (CLI, DAG, plugin URL, registry)."""
    import re

    if not isinstance(name, str) or not re.fullmatch(MODEL_NAME_PATTERN, name) or ".." in name:
        raise ConfigError(f"invalid model name {str(name)[:80]!r}: it must match {MODEL_NAME_PATTERN} "
                          "(lower-case letters, digits, '.', '_', '-'; no path)")
    return name


def check_reason(reason: str | None) -> str:
    """The reason recorded for a manual alias move or rollback: one rule for the CLI and the DAG."""
    text = (reason or "").strip()
    if not REASON_MIN_CHARS <= len(text) <= REASON_MAX_CHARS:
        raise ConfigError(f"reason must be {REASON_MIN_CHARS} to {REASON_MAX_CHARS} characters "
                          f"(got {len(text)}): it is recorded in the ledger for auditors")
    return text


def _known_task(name: str) -> str:
    from pipelines.tasks import names

    if name not in names():
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(names())}")
    return name


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    """The data contract shared by every stage."""

    raw: str = "data/raw"  # the raw data: a CSV/JSONL/Parquet file or a directory of weekly drops
    task: Annotated[str, AfterValidator(_known_task)] = "classification"  # a registered task (pipelines.tasks)
    text_column: str = "text"  # classification: the input text
    label_column: str = "label"  # classification: the target
    prompt_column: str = "prompt"  # causal_lm: the prompt of a prompt/response pair
    response_column: str = "response"  # causal_lm: the answer of a prompt/response pair
    messages_column: str = "messages"  # causal_lm: or a chat `messages` list (role, content)
    response_format: Literal["text", "json_object"] = "text"  # causal_lm: json_object = every answer is one JSON object
    pii_policy: Literal["fail", "redact"] = "redact"  # prompts and texts; PII in a response is always a row failure
    # which kinds of PII the contract looks for
    pii_detectors: tuple[Literal["email", "phone", "card", "iban"], ...] = PII_KINDS


class LengthBounds(_Section):
    min: int = Field(1, ge=0)  # fewest characters
    max: int = Field(10_000, ge=1)  # most characters

    @model_validator(mode="after")
    def _ordered(self) -> "LengthBounds":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class ValidateParams(_Section):
    """Rules of the `validate` stage (a Great Expectations suite is built from them)."""

    report_dir: str = "reports/validate"  # result.json and data_docs/ (GX Data Docs)
    quarantine_path: str = "data/quarantine.jsonl"  # rows that failed a row-level check, with the reasons (JSONL)
    text_length: LengthBounds = LengthBounds()  # bounds on each text's length in characters
    allowed_labels: tuple[str, ...] | None = None  # a list to restrict labels; null: any well-formed label
    min_examples_per_label: int = Field(3, ge=1)  # fewer cannot be stratified into train/validation/test
    max_imbalance_ratio: float | None = Field(100.0, ge=1.0)  # largest class / smallest class; null: no limit
    max_duplicate_rate: float = Field(0.2, ge=0.0, le=1.0)  # share of rows whose text repeats an earlier row
    # row-level failures up to this share are quarantined, not fatal
    quarantine_tolerance: float = Field(0.01, ge=0.0, le=1.0)


class SplitFractions(_Section):
    train: float = Field(0.8, gt=0.0, le=1.0)  # share trained on
    validation: float = Field(0.1, ge=0.0, lt=1.0)  # share for early checks and routing's threshold
    test: float = Field(0.1, ge=0.0, lt=1.0)  # share scored when no holdout is set

    @model_validator(mode="after")
    def _sums_to_one(self) -> "SplitFractions":
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1.0, got {total:g}")
        return self


class PrepareParams(_Section):
    """Options of the `prepare` stage."""

    output_dir: str = "data/prepared"  # train/validation/test Parquet, label_map.json and the data card
    seed: int = Field(42, ge=0)  # seed of the stratified split
    split: SplitFractions = SplitFractions()  # shares of the train, validation and test splits (sum 1)
    unicode_form: Literal["NFC", "NFKC"] = "NFKC"  # Unicode normalisation of every text
    lowercase: bool = False  # lower-case every text
    drop_duplicates: bool = True  # drop rows whose normalised text repeats an earlier one
    # generative tasks: unique random secrets planted in the train split (canaries.json beside it);
    # evaluate asks for them and the gate's max_canary_leaks rejects a model that gives one back
    canaries: int = Field(0, ge=0, le=100)
    canary_repeats: int = Field(1, ge=1, le=1000)  # copies of each canary in the train split


class LoraParams(_Section):
    r: int = Field(16, ge=1, le=1024)  # rank of the low-rank update
    alpha: int = Field(32, ge=1)  # scaling of the update (alpha / r)
    dropout: float | None = Field(None, ge=0.0, lt=1.0)  # None: the task's default (classification 0.05, causal_lm 0)
    target_modules: tuple[str, ...] | None = None  # None: chosen per architecture


class TrainParams(_Section):
    """Options of the `train` stage (LoRA / QLoRA fine-tuning)."""

    base_model: str = "minilm"  # "minilm" (packaged all-MiniLM-L6-v2), a local dir, or a cached hub id
    output_dir: str = "models/candidate"  # the candidate: adapter, tokenizer, label map, config, metrics, model card
    checkpoint_dir: str = "checkpoints/train"  # atomic checkpoints; a re-run with the same config and data resumes
    report_dir: str = "reports/train"  # DVCLive's metrics.json and plots
    max_length: int = Field(128, ge=8, le=131072)  # tokens per example; longer ones are cut
    epochs: int = Field(3, ge=1, le=1000)  # passes over the training split (max_steps wins when set)
    max_steps: int | None = Field(None, ge=1)  # caps the run (CI-sized runs)
    batch_size: int = Field(32, ge=1)  # examples (causal_lm with packing: packed rows) per optimiser step
    gradient_accumulation_steps: int = Field(1, ge=1)  # micro-batches each step's batch is split into
    micro_batch_tokens: int | None = Field(None, ge=8)  # also split any micro-batch over this many (padded) tokens
    eval_batch_size: int = Field(64, ge=1)  # examples per forward pass when scoring the validation split
    learning_rate: float = Field(1e-3, gt=0.0, lt=1.0)  # peak learning rate (AdamW, linear warm-up then decay)
    weight_decay: float = Field(0.0, ge=0.0)  # AdamW weight decay
    warmup_ratio: float = Field(0.06, ge=0.0, lt=1.0)  # share of the steps spent warming the learning rate up
    max_grad_norm: float = Field(1.0, gt=0.0)  # gradients are clipped to this norm
    seed: int = Field(42, ge=0)  # seed of initialisation, shuffling and dropout
    lora: LoraParams = LoraParams()  # the LoRA adapter
    checkpoint_every: int = Field(50, ge=1)  # steps between checkpoints
    keep_checkpoints: int = Field(2, ge=1)  # newest checkpoints kept
    group_by_length: bool = True  # classification: batches of similar length, padded per batch
    packing: bool = True  # causal_lm: several examples per row, attention kept within each
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more time
    quantization: Literal["none", "4bit"] = "none"  # 4bit = QLoRA (CUDA + bitsandbytes only)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 on CUDA, fp32 on CPU
    # auto: sdpa (measured fastest on an H200 and on CPU); flex_attention: CUDA only (no CPU backward)
    attn_implementation: Literal["auto", "sdpa", "flex_attention", "eager"] = "auto"
    labelled_logits_only: bool = True  # causal_lm: vocabulary logits only where a label follows, in chunks (not under fsdp)
    kernels: Literal["none", "liger"] = "none"  # liger: Liger's Triton kernels (CUDA + liger-kernel only)
    # PyTorch's deterministic algorithms: a re-run reproduces the adapter bit for bit; on a GPU some
    # backward kernels are slower that way, so throughput runs may turn it off
    deterministic: bool = True
    # under torchrun: none = every rank holds the whole model (gradients summed, as DDP); fsdp = the base
    # model's blocks sharded across ranks (FSDP2), for a model that does not fit one GPU
    sharding: Literal["none", "fsdp"] = "none"
    log_every: int = Field(10, ge=1)  # steps between logged loss and learning rate

    @model_validator(mode="after")
    def _one_example_fits(self) -> "TrainParams":
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < self.max_length:
            raise ValueError(f"micro_batch_tokens ({self.micro_batch_tokens}) is smaller than max_length "
                             f"({self.max_length}): one example would not fit")
        return self


class EvaluateParams(_Section):
    report_dir: str = "reports/evaluate"  # metrics.json, predictions, routing.json, confusion matrix
    max_examples: int | None = Field(None, ge=1)  # cap the test rows scored (None: all)
    latency_samples: int = Field(100, ge=1)  # single-example forward passes timed for p50/p95
    max_new_tokens: int = Field(64, ge=1)  # causal_lm greedy answers
    generation_batch_size: int = Field(8, ge=1)  # causal_lm: prompts per forward pass when answering
    generation_latency_samples: int = Field(3, ge=0)  # causal_lm: answers timed one at a time (TTFT, per token)
    golden_prompts: str | None = "golden/prompts.jsonl"  # causal_lm regression prompts
    # classification: a reviewed, labelled file of the model folder (data.text_column/label_column) that
    # every version is scored on instead of the test split: labels a person checked, the same rows for
    # every version (comparable across versions, and a drop with wrong labels cannot grade itself).
    holdout: str | None = None
    compare_base: bool = True  # causal_lm: also answer the test rows with the adapter off (the base model)
    base_examples: int | None = Field(None, ge=1)  # ... on the first this many of them (None: all)
    canary_alternatives: int = Field(99, ge=1, le=9999)  # same-format secrets each canary is ranked against
    # The champion version to compare with: pinned by each lifecycle run when it starts, so dvc.lock
    # records it and DVC's run-cache can skip an unchanged evaluation; null = the champion alias now.
    compare_with: int | None = Field(None, ge=1)


class GateParams(_Section):
    """The promotion policy; a null threshold disables that rule."""

    # the decision: passed, and each rule with its measured value and threshold
    decision_path: str = "reports/gate/decision.json"
    min_accuracy: float | None = Field(0.7, ge=0.0, le=1.0)  # classification floor on the scored rows; null: rule off
    min_macro_f1: float | None = Field(0.6, ge=0.0, le=1.0)  # classification floor; null: rule off
    min_class_recall: float | None = Field(0.3, ge=0.0, le=1.0)  # floor on every class's recall; null: rule off
    max_p95_latency_ms: float | None = Field(500.0, gt=0.0)  # ceiling on single-example p95 latency; null: rule off
    # candidate p95 / champion p95, both measured side by side in the same evaluation (load-independent)
    max_latency_ratio: float | None = Field(1.5, gt=0.0)
    max_ece: float | None = Field(None, ge=0.0, le=1.0)  # ceiling on expected calibration error; null: rule off
    max_perplexity: float | None = Field(None, gt=0.0)  # causal_lm ceiling; null: rule off
    min_rouge_l: float | None = Field(None, ge=0.0, le=1.0)  # causal_lm floor; null: rule off
    min_exact_match: float | None = Field(None, ge=0.0, le=1.0)  # causal_lm floor; null: rule off
    # causal_lm floor on evaluate.golden_prompts; null: rule off
    min_golden_pass_rate: float | None = Field(None, ge=0.0, le=1.0)
    min_json_valid: float | None = Field(None, ge=0.0, le=1.0)  # data.response_format: json_object
    min_field_match: float | None = Field(None, ge=0.0, le=1.0)  # ... share of the reference's fields matched
    max_answer_pii: float | None = Field(0.0, ge=0.0, le=1.0)  # causal_lm: share of answers with PII in them
    max_ttft_p95_ms: float | None = Field(None, gt=0.0)  # causal_lm: time to first token, one request at a time
    require_beats_base: bool = True  # causal_lm: significantly better than the base model (paired bootstrap)
    max_canary_leaks: float | None = Field(None, ge=0.0, le=1.0)  # share of planted canaries said back
    max_canary_exposure: float | None = Field(None, ge=0.0)  # bits (log2 rank among evaluate.canary_alternatives)
    # paired test against the champion: mcnemar (classification) or bootstrap
    significance: Literal["mcnemar", "bootstrap"] = "mcnemar"
    alpha: float = Field(0.05, gt=0.0, lt=1.0)  # significance level of the paired test
    require_improvement: bool = False  # true: a challenger must be significantly better, not only not worse
    bootstrap_resamples: int = Field(2000, ge=100)  # resamples of the bootstrap test
    seed: int = Field(0, ge=0)  # seed of the bootstrap test


class RegistryParams(_Section):
    root: str = "registry"  # a local directory or any fsspec URL (s3://, gs://)
    # the model's name in the registry (its folder's name)
    model_name: str = Field("text-classifier", pattern=MODEL_NAME_PATTERN)
    gto_tags: bool = False  # also create GTO git tags on promotion (needs a git repo with commits)
    # Signed ledger (pipelines.registry.signing): the public keys (base64 of the raw 32-byte Ed25519 key)
    # whose signatures the ledger must carry; empty: unsigned entries are accepted. Kept here, in git,
    # never in the registry, so that write access to the registry's storage cannot change them.
    trusted_keys: tuple[str, ...] = ()
    trusted_keys_file: str | None = None  # ... and/or a file of them, one per line (must exist when named)
    signing_key_file: str | None = None  # the promoting component's private key (PEM, mode 0600) ...
    signing_key_env: str = "PIPELINES_REGISTRY_SIGNING_KEY"  # ... or the env var holding it

    @field_validator("trusted_keys")
    @classmethod
    def _raw_ed25519(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        import base64
        import binascii

        for key in keys:
            try:
                raw = base64.b64decode(key, validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != 32:
                raise ValueError(f"{key[:16]!r}... is not a base64 Ed25519 public key (32 bytes)")
        return keys


class FallbackParams(_Section):
    url: str | None = None  # an OpenAI-compatible base URL; None disables hybrid routing
    api_key_env: str = "FALLBACK_API_KEY"  # env var holding the upstream's API key
    model: str = "gpt-4o-mini"  # the upstream model asked
    # below this top score, ask the upstream; "tuned": the served version's own threshold, chosen on the
    # cost-quality frontier by its evaluation (`route` params, `pipelines route tune`), 0.5 if it has none
    classify_threshold: float | Literal["tuned"] = "tuned"
    ood_patterns: tuple[str, ...] = ()  # regexes over user messages that send a chat upstream
    min_mean_logprob: float | None = Field(None, le=0.0)  # greedy chat answers less sure than this go upstream
    timeout_s: float = Field(10.0, gt=0.0)  # per upstream request


class RouteParams(_Section):
    """Hybrid routing's threshold, tuned by `evaluate` on the validation split (classifiers): the
    cheapest threshold whose blended accuracy meets the floor (`pipelines.economics.routing`)."""

    # the upstream's accuracy on this task: configured (an assumption the README and evidence name), or
    # null: no threshold is tuned and serving falls back to 0.5 (routing evidence says why)
    upstream_accuracy: float | None = Field(None, ge=0.0, le=1.0)
    min_accuracy: float | None = Field(None, ge=0.0, le=1.0)  # the hybrid's floor; null: gate.min_accuracy


class ServeParams(_Section):
    host: str = "127.0.0.1"  # address the server listens on
    port: int = Field(8000, ge=1, le=65535)  # port the server listens on
    alias: str = "champion"  # the registry alias the server follows
    poll_seconds: float = Field(2.0, gt=0.0)  # how often the alias is checked
    api_keys_env: str = "PIPELINES_API_KEYS"  # comma-separated keys
    api_keys_file: str | None = None  # one key per line; when set, the file must exist
    allow_unauthenticated: bool = False  # no keys on a non-loopback address: refused unless true
    max_body_bytes: int = Field(1_000_000, ge=1024)  # largest request body
    max_texts: int = Field(64, ge=1)  # texts per /v1/classify request
    max_chars: int = Field(4000, ge=1)  # characters per text or prompt
    # tokens per input (chat as its template renders it); null: the model's limit
    max_input_tokens: int | None = Field(512, ge=1)
    max_tokens: int = Field(256, ge=1)  # most tokens generated per request
    request_timeout_s: float = Field(30.0, gt=0.0)  # reading the body included; a stream's, until it starts
    # A streamed answer ends with an error event and [DONE] when its first token takes longer than
    # stream_first_token_s, two tokens are further apart than stream_idle_s, or it runs past stream_total_s.
    stream_first_token_s: float = Field(30.0, gt=0.0)
    stream_idle_s: float = Field(15.0, gt=0.0)  # a stream ends with an error event when two tokens are further apart
    stream_total_s: float = Field(300.0, gt=0.0)  # a stream ends with an error event when it runs longer
    header_timeout_s: float = Field(10.0, gt=0.0)  # a connection must send a request's headers within this
    max_connections: int = Field(1024, ge=1)  # open connections; at the limit the oldest idle one is closed
    max_connections_per_client: int = Field(64, ge=1)  # from one address; its oldest idle one makes room
    stuck_after_s: float = Field(600.0, gt=0.0)  # a model's worker busy on one job this long: /healthz says 503
    max_batch: int = Field(64, ge=1)  # texts per forward pass
    max_wait_ms: float = Field(5.0, ge=0.0)  # micro-batching: how long texts are gathered for one forward pass
    max_queue: int = Field(256, ge=1)  # waiting requests before 429
    max_generation_batch: int = Field(16, ge=1)  # greedy generations answered together in one generate
    generation_wait_ms: float = Field(50.0, ge=0.0)  # under load, gather a generation batch for at most this long
    fallback: FallbackParams = FallbackParams()  # hybrid routing to a stronger OpenAI-compatible model; url null: off


class GateBounds(_Section):
    """How far a UI-triggered run may move a gate threshold: never below `floor`."""

    min_accuracy: float = Field(0.5, ge=0.0, le=1.0)  # a run may loosen gate.min_accuracy down to this, no lower
    min_macro_f1: float = Field(0.4, ge=0.0, le=1.0)  # a run may loosen gate.min_macro_f1 down to this, no lower


class LifecycleParams(_Section):
    """What the `model_lifecycle` DAG's params form offers; `pipelines.lifecycle` re-checks a run's values."""

    schedule: str | None = "0 3 * * 1"                  # cron (UTC) of the weekly retrain; null: only triggers
    # A slot the scheduler missed (the platform was down): when it comes back more than missed_slot_grace_h
    # after the slot, `skip` lets the next slot retrain (never every model at once on start-up); `run` runs it.
    missed_slot: Literal["skip", "run"] = "skip"
    # a missed slot still runs when the scheduler is back within this many hours
    missed_slot_grace_h: float = Field(6.0, ge=0.0)
    sample_domain: Literal["banking", "it_helpdesk", "support_assistant"] = "banking"  # `pipelines sample` data for this model's demo
    datasets: dict[str, str] = Field(default_factory=lambda: {"default": "data/raw"})  # name -> raw path
    base_models: tuple[str, ...] = ("minilm",)          # the allowlist a run may choose from
    max_epochs: int = Field(20, ge=1)  # most epochs the run form accepts
    learning_rate_range: tuple[float, float] = (1e-6, 0.05)  # learning rates the run form accepts [low, high]
    lora_ranks: tuple[int, ...] = (4, 8, 16, 32, 64)  # LoRA ranks the run form accepts
    gate_floor: GateBounds = GateBounds()               # overrides may tighten freely, loosen only to here
    serving_urls: tuple[str, ...] = ()                  # servers to confirm the swap with after promotion
    # how long promotion waits for serving_urls to report the new champion
    serving_timeout_s: float = Field(120.0, gt=0.0)
    serving_key_env: str = "PIPELINES_SERVING_KEY"     # env var with an API key of those servers (their /metrics)
    approvers: tuple[str, ...] = ()                     # Airflow user ids who may answer a run's approval step; empty: any user allowed to edit the DAG
    approval_timeout_h: float = Field(72.0, gt=0.0)     # unanswered this long: the approval step fails and nothing is promoted
    # a run not done this long after it was queued: alert (null: none; `airflow dags test` in Airflow 3.3.2
    # crashes at the end of a run of a DAG with a deadline, so the embedded default leaves it off)
    run_deadline_h: float | None = Field(None, gt=0.0)
    alert_webhook_env: str = "PIPELINES_ALERT_WEBHOOK"  # env var with a webhook URL the alert POSTs to (unset: log only)

    @model_validator(mode="after")
    def _names(self) -> "LifecycleParams":
        import re

        for name in self.datasets:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,39}", name):
                raise ValueError(f"dataset name {name!r} must match [a-z0-9][a-z0-9_-]*")
        if not self.datasets or not self.base_models:
            raise ValueError("datasets and base_models must not be empty")
        return self


class LineageParams(_Section):
    """Where each lifecycle run's evidence goes: a git branch of its own and the DVC remote."""

    # a branch of its own: the user's working branch is never touched
    branch: str = Field("lineage", pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")
    push: bool = True                                   # `dvc push` data and models after each run
    # reports committed beside dvc.lock, params.yaml and the raw data's .dvc file
    evidence: tuple[str, ...] = ("reports/validate/result.json", "reports/train/metrics.json",
                                 "reports/train/plots/metrics/loss.tsv", "reports/evaluate/metrics.json",
                                 "reports/evaluate/routing.json",
                                 "reports/gate/decision.json", "data/prepared/data_card.json")


class HardwarePrice(_Section):
    """What one machine of a kind costs to keep up, per hour, and where that figure comes from."""

    usd_per_hour: float = Field(gt=0.0)  # what an hour of this machine costs
    as_of: date                                        # when the price was read from its source
    source: str = Field(min_length=1)                  # where (a price page); the user checks it before relying on it
    note: str = ""  # anything else a reader of the price should know


class ApiPrice(_Section):
    """A hosted model's list price per 1M tokens, and where that figure comes from."""

    usd_per_1m_input: float = Field(ge=0.0)  # price of a million input tokens
    usd_per_1m_output: float = Field(ge=0.0)  # price of a million output tokens
    as_of: date  # the date the price was read
    source: str = Field(min_length=1)  # where the price was read


# The defaults a `cost` section starts from; a params file adds kinds and models or overrides one by name.
# Read from copies of the providers' price pages found offline (the dates are those pages'); verify them.
HARDWARE_PRICES: dict[str, dict[str, Any]] = {
    "cpu-2vcpu": {"usd_per_hour": 0.0816, "as_of": "2026-06-17", "source": "https://aws.amazon.com/ec2/pricing/on-demand/",
                  "note": "AWS m7g.large on demand, us-east-1: 2 vCPU, 8 GiB (the development machine's size)"},
    "gpu-a10g": {"usd_per_hour": 1.006, "as_of": "2026-06-17", "source": "https://aws.amazon.com/ec2/pricing/on-demand/",
                 "note": "AWS g5.xlarge on demand, us-east-1: 1x A10G 24 GB, 4 vCPU"},
    "gpu-h100": {"usd_per_hour": 4.916, "as_of": "2025-01-01", "source": "https://aws.amazon.com/ec2/capacityblocks/pricing/",
                 "note": "AWS p5.48xlarge Capacity Block, us-east-1: effective price per H100-hour"},
    "gpu-h200": {"usd_per_hour": 5.408, "as_of": "2025-01-01", "source": "https://aws.amazon.com/ec2/capacityblocks/pricing/",
                 "note": "AWS p5e.48xlarge Capacity Block, us-east-2: effective price per H200-hour"},
}
API_PRICES: dict[str, dict[str, Any]] = {
    "gpt-4o-mini": {"usd_per_1m_input": 0.15, "usd_per_1m_output": 0.60, "as_of": "2026-05-01",
                    "source": "https://platform.openai.com/docs/pricing"},
    "gpt-4o": {"usd_per_1m_input": 2.50, "usd_per_1m_output": 10.00, "as_of": "2026-05-01",
               "source": "https://platform.openai.com/docs/pricing"},
    "claude-sonnet-4-5": {"usd_per_1m_input": 3.00, "usd_per_1m_output": 15.00, "as_of": "2025-11-25",
                          "source": "https://platform.claude.com/docs/en/about-claude/pricing"},
}


def _over_defaults(defaults: dict[str, dict[str, Any]]):
    def merge(value: Any) -> Any:
        return {**defaults, **value} if isinstance(value, dict) else value
    return merge


class CostParams(_Section):
    """Prices for `pipelines cost`: what the hardware costs per hour and what the APIs compared with
    charge per token. Never hidden constants: each default names its date and source, and a params
    file overrides any of them by name (or adds its own)."""

    hardware: Annotated[dict[str, HardwarePrice], BeforeValidator(_over_defaults(HARDWARE_PRICES))] = \
        Field(default_factory=lambda: {k: HardwarePrice(**v) for k, v in HARDWARE_PRICES.items()})
    api: Annotated[dict[str, ApiPrice], BeforeValidator(_over_defaults(API_PRICES))] = \
        Field(default_factory=lambda: {k: ApiPrice(**v) for k, v in API_PRICES.items()})
    serve_on: str = "cpu-2vcpu"                         # the hardware kind this model's server runs on
    train_on: str = "cpu-2vcpu"                         # the kind of the `gpu` pool's workers (train's compute)
    workers_on: str = "cpu-2vcpu"                       # the kind of the other tasks' workers (a run's compute)
    compare_with: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o")  # API models priced beside the self-hosted one
    latency_slo_p99_ms: float = Field(500.0, gt=0.0)    # the throughput that counts keeps p99 under this
    hours_per_month: float = Field(730.0, gt=0.0)       # a machine kept up all month
    monthly_requests: int = Field(1_000_000, ge=1)      # the volume the monthly figures are given for
    api_prompt_tokens: int = Field(150, ge=0)           # a classifier's request to an LLM API: instructions and
    api_answer_tokens: int = Field(5, ge=0)             # the label list on top of the text; the label back
    max_tokens: int = Field(64, ge=1)                   # a generative request's answer length in the load run

    @model_validator(mode="after")
    def _known_names(self) -> "CostParams":
        for field, name in (("serve_on", self.serve_on), ("train_on", self.train_on), ("workers_on", self.workers_on)):
            if name not in self.hardware:
                raise ValueError(f"{field}: unknown hardware kind {name!r} (known: {', '.join(sorted(self.hardware))})")
        unknown = [m for m in self.compare_with if m not in self.api]
        if unknown:
            raise ValueError(f"compare_with: no price for {', '.join(map(repr, unknown))} "
                             f"(priced: {', '.join(sorted(self.api))})")
        return self


class Params(_Section):
    """All sections of params.yaml that the stages read."""

    data: DataParams = DataParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    prepare: PrepareParams = PrepareParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    gate: GateParams = GateParams()
    registry: RegistryParams = RegistryParams()
    serve: ServeParams = ServeParams()
    lifecycle: LifecycleParams = LifecycleParams()
    lineage: LineageParams = LineageParams()
    cost: CostParams = CostParams()
    route: RouteParams = RouteParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _across_sections(self) -> "Params":
        from pipelines.tasks import task_spec

        if self.prepare.canaries and task_spec(self.data.task).labelled:
            raise ValueError(f"prepare.canaries needs a generative data.task, not {self.data.task!r}: "
                             "a classifier cannot say a secret back")
        if self.evaluate.holdout and not task_spec(self.data.task).labelled:
            raise ValueError(f"evaluate.holdout is a labelled file for classifiers, not for {self.data.task!r} "
                             "(generative models keep reviewed cases in evaluate.golden_prompts)")
        return self


def _describe(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]).replace("validate_", "validate")
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{loc}'"
    if not loc:  # a rule across sections names its keys itself
        return f"{source}: {first['msg'].removeprefix('Value error, ')}"
    return f"{source}: invalid value for '{loc}': {first['msg']}"


OTHER_STAGE_SECTIONS: tuple[str, ...] = ()


def parse_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise ConfigError naming the first bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    # Sections owned by later stages (train, evaluate, ...) are validated by their own modules.
    mine = {k: v for k, v in raw.items() if k not in OTHER_STAGE_SECTIONS}
    try:
        return Params.model_validate(mine)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would keep the last silently)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (line {key_node.start_mark.line + 1})", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(text: str) -> Any:
    """Parse YAML like `yaml.safe_load`, refusing duplicate keys."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def load_params(path: str | Path) -> Params:
    """Read and validate a params file. A missing file is an error wherever it is read: no command
    ever runs on defaults because it was started in the wrong folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {path} not found" if not path.exists() else f"params file {path} is not a file")
    try:
        raw = read_yaml(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        problem = getattr(err, "problem", None) if isinstance(err, yaml.MarkedYAMLError) else None
        raise ConfigError(f"{path}: not valid YAML ({problem or str(err).splitlines()[0]})") from None
    return parse_params(raw, str(path))


def with_overrides(model: _Section, **overrides: Any) -> Any:
    """Return a copy of a section with the non-None overrides applied and re-validated."""
    values = {k: v for k, v in overrides.items() if v is not None}
    if not values:
        return model
    merged = {**model.model_dump(), **values}
    try:
        return type(model).model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_describe(err, "command line")) from None
