"""Atomic, verifiable training checkpoints (no pickle anywhere).

Inputs: the trainable parameters, optimizer, scheduler, RNG states and data position.
Outputs: `step-NNNNNNNN/` directories under the checkpoint dir holding `trainable.safetensors`,
`optimizer.safetensors`, `rng.safetensors`, `state.json` and, written last, `manifest.json` with
the sha256 of every other file. A directory is written under a temp name and renamed, so a
checkpoint is complete or absent; `latest_valid` skips any whose manifest or hashes do not
check out (truncated or corrupt), so a bad newest checkpoint is never loaded.
"""
from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.core.dataio import atomic_dir
from pipelines.core.hashing import sha256_file
from pipelines.training.distributed import full, like, trainable_full

FILES = ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json")


def _flatten_optimizer(opt_state: dict) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for idx, entry in opt_state["state"].items():
        for key, value in entry.items():
            name = f"{idx}.{key}"
            if hasattr(value, "detach"):
                tensors[name] = full(value.detach()).cpu().contiguous()
            else:
                scalars[name] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save(directory: str | Path, step: int, model, optimizer, scheduler, position: dict[str, Any],
         meta: dict[str, Any], keep: int = 2, write: bool = True) -> Path:
    """Write checkpoint `step` atomically, then prune all but the newest `keep`. Under torchrun every
    rank calls it (sharded tensors are gathered collectively) and only the one with `write` writes."""
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    target = directory / f"step-{step:08d}"
    trainable = trainable_full(model)
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    if not write:
        return target
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{i}"] = s
    with atomic_dir(target, owner="checkpoint") as tmp:
        save_file(trainable, str(tmp / "trainable.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        state = {"step": step, "position": position, "optimizer": opt_meta, "scheduler": scheduler.state_dict(),
                 "python_rng": _py_rng(), "numpy_rng": _np_rng(), "meta": meta}
        (tmp / "state.json").write_text(json.dumps(state, default=_jsonable), encoding="utf-8")
        manifest = {name: sha256_file(tmp / name) for name in FILES}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    for old in sorted(directory.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _py_rng():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _np_rng():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), pos, has_gauss, cached]


def is_valid(path: Path) -> bool:
    manifest = path / "manifest.json"
    try:
        expected = json.loads(manifest.read_text(encoding="utf-8"))
        return set(expected) == set(FILES) and all(sha256_file(path / n) == h for n, h in expected.items())
    except (OSError, ValueError):
        return False


def latest_valid(directory: str | Path, meta: dict[str, Any]) -> Path | None:
    """The newest complete checkpoint made for the same run config, skipping corrupt ones."""
    directory = Path(directory)
    for path in sorted(directory.glob("step-*"), reverse=True):
        if not is_valid(path):
            print(f"warning: skipping incomplete or corrupt checkpoint {path}", file=sys.stderr)
            continue
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        if state.get("meta") != meta:
            print(f"note: checkpoint {path} belongs to another configuration or data; starting fresh",
                  file=sys.stderr)
            return None
        return path
    return None


def load(path: Path, model, optimizer, scheduler) -> dict[str, Any]:
    """Restore everything saved by `save`; return the state (step, position)."""
    import torch
    from safetensors.torch import load_file

    params = dict(model.named_parameters())
    for name, tensor in load_file(str(path / "trainable.safetensors")).items():
        with torch.no_grad():
            params[name].copy_(like(tensor, params[name]))
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    opt_state = _unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), state["optimizer"])
    by_index = [p for group in optimizer.param_groups for p in group["params"]]
    for idx, entry in opt_state["state"].items():  # moments shaped like their (maybe sharded) parameter
        for key, value in entry.items():
            if hasattr(value, "shape") and value.shape == by_index[idx].shape:
                entry[key] = like(value, by_index[idx])
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(state["scheduler"])
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")])
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy_rng"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return state
