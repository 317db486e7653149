"""Base models, hardware and LoRA wiring for the `train` stage (and later `evaluate`/`serve`).

Inputs: `train.base_model` ("minilm", a local directory or a hub id already in the local
Hugging Face cache), the task and the LoRA/precision params. Outputs: the resolved base path,
the chosen device and dtype, and a peft model ready to train; or `InputError` with one line
(missing base, pickle-only weights, unknown architecture without targets, QLoRA without CUDA).
Nothing is downloaded: hub access is forced offline.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.core.errors import ConfigError, InputError
from pipelines.core.hashing import content_hash
from pipelines.tasks import task_spec
from pipelines.training import base_models
from pipelines.training.base_models import quiet_transformers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
warnings.filterwarnings("ignore", message=".*requires_grad=True to a scalar.*")


# LoRA targets per `config.model_type`. Encoders: attention projections. Decoders: every linear
# layer of attention and MLP, as the QLoRA paper recommends for instruction tuning.
_DECODER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("query", "key", "value"),
    "roberta": ("query", "key", "value"),
    "xlm-roberta": ("query", "key", "value"),
    "distilbert": ("q_lin", "k_lin", "v_lin"),
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "gemma": _DECODER,
    "falcon": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" or "cpu"
    dtype_name: str  # "float32" | "bfloat16" | "float16"
    gpus: int
    threads: int

    @property
    def dtype(self):
        import torch

        return getattr(torch, self.dtype_name)

    def describe(self) -> dict[str, Any]:
        import torch

        name = torch.cuda.get_device_name(0) if self.device == "cuda" else "cpu"
        return {"device": self.device, "name": name, "dtype": self.dtype_name, "gpus": self.gpus,
                "threads": self.threads, "torch": torch.__version__}


def select_hardware(precision: str = "auto", quantization: str = "none") -> Hardware:
    """CUDA when present (bf16 where supported, else fp16), otherwise CPU fp32 on all cores."""
    import torch

    cuda = torch.cuda.is_available()
    if quantization == "4bit" and not cuda:
        raise ConfigError("train.quantization: 4bit (QLoRA) needs a CUDA GPU and bitsandbytes; no CUDA GPU found")
    if quantization == "4bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("train.quantization: 4bit (QLoRA) needs the bitsandbytes package; it is not installed")
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if precision in ("bf16", "fp16") and not cuda:
        raise ConfigError(f"train.precision: {precision} needs a CUDA GPU; use fp32 or auto on CPU")
    threads = os.cpu_count() or 1
    if not cuda:
        torch.set_num_threads(threads)
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision]
    return Hardware("cuda" if cuda else "cpu", dtype, torch.cuda.device_count() if cuda else 0, threads)


def attention_implementation(setting: str, hw: Hardware, generative: bool) -> str | None:
    """The transformers attention implementation for `train.attn_implementation`. `auto`: sdpa for
    causal LMs, on CPU and CUDA alike (measured on an H200 with a Llama-3-8B shape and packed 4096-token
    rows: sdpa 9.9k tokens/s, flex attention 2.9k: see benchmarks/gpu_lora_throughput.py); for encoders
    the model's own default. None = let transformers choose."""
    if setting == "auto":
        return "sdpa" if generative else None
    if setting == "flex_attention" and hw.device != "cuda":
        raise ConfigError("train.attn_implementation: flex_attention needs a CUDA GPU (PyTorch has no "
                          "flex attention backward on CPU); use auto or sdpa")
    return setting


def check_kernels(kernels: str, hw: Hardware) -> None:
    if kernels == "liger" and hw.device != "cuda":
        raise ConfigError("train.kernels: liger needs a CUDA GPU (Triton kernels); use none on CPU")
    if kernels == "liger" and importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("train.kernels: liger needs the liger-kernel package; it is not installed")


def apply_kernels(model, kernels: str):
    """Swap in fused kernels before LoRA is attached (they patch the base model's modules)."""
    if kernels == "liger":
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model)
    return model


def resolve_base(base_model: str) -> Path:
    """A local directory holding the base model, or InputError naming why there is none: a packaged
    model by short name (`minilm`, `smollm2`: see `base_models`), a directory, or a hub id already in
    the local Hugging Face cache (nothing is downloaded)."""
    packaged = base_models.packaged(base_model)
    if packaged is not None:
        return packaged
    path = Path(base_model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise InputError(f"base model {path}: no config.json, not a model directory")
        return path
    if base_model.count("/") == 1 and not base_model.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(base_model, local_files_only=True))
        except Exception:
            raise InputError(f"base model '{base_model}': not a local directory and not in the local Hugging Face "
                             "cache (downloads are disabled; copy the model to a directory and point "
                             "train.base_model at it)") from None
    raise InputError(f"base model not found: {base_model} (packaged ones: {', '.join(base_models.NAMES)})")


def require_safetensors(path: Path) -> None:
    """Refuse weights that would be unpickled: only safetensors are ever loaded."""
    files = [p for p in path.iterdir() if p.is_file()]
    if any(p.suffix == ".safetensors" for p in files):
        return
    pickles = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise InputError(f"{path}: weights only as pickle ({', '.join(sorted(pickles))}); "
                         "refusing to load them, convert to safetensors")
    raise InputError(f"{path}: no *.safetensors weights found")


def candidate_hash(model_dir: str | Path) -> str:
    """The identity of a trained candidate: sha256 over every file of its directory."""
    path = Path(model_dir)
    if not (path / "adapter").is_dir():
        raise InputError(f"no trained candidate at {path}; run the train stage first")
    return content_hash(path)


def lora_targets(model_type: str, configured: tuple[str, ...] | None) -> list[str]:
    if configured:
        return list(configured)
    if model_type not in LORA_TARGETS:
        raise ConfigError(f"no known LoRA target modules for architecture '{model_type}'; "
                          "set train.lora.target_modules")
    return list(LORA_TARGETS[model_type])


def load_tokenizer(base: Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(base))
    except Exception as err:
        raise InputError(f"base model {base}: tokenizer unreadable ({type(err).__name__})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_base(base: Path, task: str, hw: Hardware, quantization: str = "none",
              labels: list[str] | None = None, attn_implementation: str | None = None):
    """Load the base model from safetensors for `task` with the chosen dtype (and 4-bit for QLoRA)."""
    import transformers

    require_safetensors(base)
    quiet_transformers()
    kwargs: dict[str, Any] = {"dtype": hw.dtype, "use_safetensors": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization == "4bit":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=hw.dtype)
    try:
        spec = task_spec(task)
        if spec.labelled:
            kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                          label2id={lab: i for i, lab in enumerate(labels)})
        model = getattr(transformers, spec.auto_model).from_pretrained(str(base), **kwargs)
    except (OSError, ValueError) as err:
        raise InputError(f"base model {base}: cannot be loaded ({str(err).splitlines()[0][:200]})") from None
    return model


def attach_lora(model, task: str, lora, gradient_checkpointing: bool = False, quantized: bool = False):
    """Wrap the base model with a LoRA adapter (classifier head trained and saved for SEQ_CLS)."""
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if model.config.pad_token_id is None and getattr(model.config, "eos_token_id", None) is not None:
        model.config.pad_token_id = model.config.eos_token_id
    spec = task_spec(task)
    config = LoraConfig(
        task_type=TaskType[spec.peft_task_type],
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=spec.lora_dropout if lora.dropout is None else lora.dropout,
        target_modules=lora_targets(model.config.model_type, lora.target_modules),
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # target modules that the model does not have
        raise ConfigError(f"train.lora.target_modules: {str(err).splitlines()[0][:200]}") from None


def trained_base(model_dir: str | Path) -> Path:
    """The base model a `train` output directory was trained on: where training found it, else by name."""
    import json

    config = json.loads((Path(model_dir) / "train_config.json").read_text(encoding="utf-8"))
    base = Path(config["base_path"])
    return base if base.exists() else resolve_base(config["base_model"])


def load_trained(model_dir: str | Path, device: str = "cpu", dtype_name: str = "float32", base: Path | None = None):
    """Reload base + adapter + tokenizer offline from a `train` output directory, on `device` in
    `dtype_name` (evaluation on a GPU: bf16). `base`: a checked copy of the base model to load instead
    of the one `trained_base` finds (serving: see `serving.engine.load_version`)."""
    import json

    from peft import PeftModel

    model_dir = Path(model_dir)
    adapter = model_dir / "adapter"
    require_safetensors(adapter)
    config = json.loads((model_dir / "train_config.json").read_text(encoding="utf-8"))
    base = base or trained_base(model_dir)
    hw = Hardware(device, dtype_name, 0, os.cpu_count() or 1)
    labels = config.get("labels")
    model = load_base(base, config["task"], hw, labels=labels)
    model = PeftModel.from_pretrained(model, str(adapter), use_safetensors=True)
    model.to(device).eval()
    return model, load_tokenizer(model_dir / "tokenizer")
