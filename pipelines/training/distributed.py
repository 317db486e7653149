"""Several training processes (torchrun: one per GPU, or gloo processes on CPU) acting as one.

Inputs: the process' rank, world size and local rank (read from torchrun's environment by the CLI,
never here). Outputs: the process group, each rank's share of a step, and the summed gradients.
Every rank holds the whole (LoRA) model and the same deterministic batch plan; each step's members
are dealt round-robin (`share`), each rank's loss is divided by the items of the *whole* step, and
the gradients (plus the step loss, in the same buffer) are summed across ranks before the optimiser
step, so N processes take exactly the step one process would take on the same global batch. Only
rank 0 writes checkpoints, outputs and progress.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping

from pipelines.core.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    master: tuple[str, int] = ("127.0.0.1", 29500)  # where the rendezvous store listens
    agent_store: bool = False  # torchrun's agent hosts the store (else rank 0 does)
    attempt: int = 0  # torchrun's restart count: keeps a restarted group's keys apart from the last one's

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Dist":
        """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK); one process when they are absent."""
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank, local = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
            master = (env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", "29500")))
            attempt = int(env.get("TORCHELASTIC_RESTART_COUNT", "0"))
        except ValueError:
            raise ConfigError("RANK, WORLD_SIZE, LOCAL_RANK, MASTER_PORT and TORCHELASTIC_RESTART_COUNT must be "
                              "integers (set by torchrun)") from None
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"RANK {rank} is outside WORLD_SIZE {world}")
        return cls(rank, world, local, master, env.get("TORCHELASTIC_USE_AGENT_STORE") == "True", attempt)


SINGLE = Dist()


def init(dist: Dist, device: str) -> None:
    """Join the process group (nccl on CUDA, gloo on CPU); on CUDA pin this process to its GPU."""
    import torch
    import torch.distributed as td

    if dist.world == 1 or td.is_initialized():
        return
    if device == "cuda":
        torch.cuda.set_device(dist.local_rank)
    else:  # the ranks share the cores
        torch.set_num_threads(max(1, torch.get_num_threads() // dist.world))
    # A store of our own under a per-attempt prefix: after torchrun restarts a failed group, the new
    # ranks must not read the addresses the old ones published (seen here: gloo then dials a dead port).
    store = td.TCPStore(dist.master[0], dist.master[1], dist.world,
                        is_master=not dist.agent_store and dist.rank == 0, timeout=timedelta(minutes=10))
    td.init_process_group("nccl" if device == "cuda" else "gloo", rank=dist.rank, world_size=dist.world,
                          store=td.PrefixStore(f"pipelines/attempt-{dist.attempt}", store))


def finish(dist: Dist) -> None:
    import torch.distributed as td

    if dist.world > 1 and td.is_initialized():
        td.barrier()
        td.destroy_process_group()


def shard(model, dist: Dist):
    """FSDP2: shard every transformer block (transformers' `_no_split_modules`) and then the rest.
    FSDP averages gradients over ranks (a custom divide factor needs NCCL's PreMulSum, which gloo lacks),
    so `train_step` multiplies a sharded model's loss by the world size to keep summed semantics."""
    from torch.distributed.fsdp import fully_shard

    if dist.world == 1:
        return model
    blocks = set(getattr(model.get_base_model(), "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    return model


def sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full(tensor):
    """The whole tensor behind a sharded one (a collective: every rank calls it, in the same order)."""
    return tensor.full_tensor() if type(tensor).__name__ == "DTensor" else tensor


def like(tensor, reference):
    """A whole tensor laid out as `reference` is (sharded the same way when it is a DTensor)."""
    if type(reference).__name__ != "DTensor":
        return tensor.to(reference.device)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(tensor.to(reference.device), reference.device_mesh, reference.placements)


def trainable_full(model) -> dict:
    """Trainable parameters as whole host tensors, by name (collective under FSDP)."""
    return {k: full(v.detach()).cpu().contiguous() for k, v in model.named_parameters() if v.requires_grad}


def share(members: list, dist: Dist) -> list:
    """This rank's part of one step's members (round-robin, so sizes differ by at most one)."""
    return members[dist.rank::dist.world]


def sum_gradients(params: list, extra, dist: Dist, grads_too: bool = True) -> None:
    """Sum every parameter's gradient, and `extra` (a scalar tensor), across ranks in one collective
    (only `extra` when FSDP has already reduced the gradients)."""
    import torch
    import torch.distributed as td

    if dist.world == 1:
        return
    if not grads_too:
        td.all_reduce(extra, op=td.ReduceOp.SUM)
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [extra.reshape(1).float()])
    td.all_reduce(flat, op=td.ReduceOp.SUM)
    at = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[at:at + n].view_as(g).to(g.dtype)
        at += n
    extra.copy_(flat[at])
