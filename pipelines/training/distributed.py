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
from typing import Mapping

from pipelines.core.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Dist":
        """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK); one process when they are absent."""
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank, local = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
        except ValueError:
            raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"RANK {rank} is outside WORLD_SIZE {world}")
        return cls(rank, world, local)


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
    td.init_process_group("nccl" if device == "cuda" else "gloo", rank=dist.rank, world_size=dist.world)


def finish(dist: Dist) -> None:
    import torch.distributed as td

    if dist.world > 1 and td.is_initialized():
        td.barrier()
        td.destroy_process_group()


def share(members: list, dist: Dist) -> list:
    """This rank's part of one step's members (round-robin, so sizes differ by at most one)."""
    return members[dist.rank::dist.world]


def sum_gradients(params: list, extra, dist: Dist) -> None:
    """Sum every parameter's gradient, and `extra` (a scalar tensor), across ranks in one collective."""
    import torch
    import torch.distributed as td

    if dist.world == 1:
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
