"""Multi-process (``torchrun``) data-parallel helpers for adapter training.

Launch::

    torchrun --nproc_per_node 8 -m medad train ...          # one node, 8 GPUs (NCCL)
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 8 -m medad train ...
    torchrun --nproc_per_node 2 -m medad train --device cpu ...  # CPU, gloo (what the tests run)

Only the adapters train (a few M parameters), so gradients are averaged with one flat ``all_reduce`` per step
(:func:`all_reduce_gradients`) instead of wrapping the model in ``DistributedDataParallel``: the last level's ``fc2``
never receives a gradient (nothing runs after it), which DDP would have to be told about
(``find_unused_parameters``), and the training loop never calls the module's ``forward``. Every rank holds the same
global batch order (same seed) and processes its slice of each global batch; losses are scaled by the slice's share of
the global batch so that the averaged update equals the single-process update on the same global batch.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "cleanup", "barrier", "all_reduce_gradients", "broadcast_parameters",
           "shard", "world_info"]


@dataclass(frozen=True)
class DistInfo:
    """Rank and world size of this process (``world_size == 1``: not distributed) and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_info() -> DistInfo:
    """The current process group's rank/world size (1 process when no group is initialized)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def init_distributed(device: str | torch.device | None = None, backend: str | None = None,
                     timeout_s: int = 1800) -> DistInfo:
    """Join the process group described by the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...).

    Without ``WORLD_SIZE > 1`` in the environment this is a no-op returning a single-process :class:`DistInfo`.

    Args:
        device: ``"cuda"`` (each rank takes ``cuda:LOCAL_RANK``), ``"cpu"`` or None (cuda when available).
        backend: default ``nccl`` on CUDA, ``gloo`` on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistInfo(0, 1, 0, dev if device is None or use_cuda else torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"),
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local, dev)


def cleanup() -> None:
    """Leave the process group (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_gradients(params: Iterable[torch.nn.Parameter], op: str = "sum") -> None:
    """Sum (``op="sum"``) or average (``"mean"``) the gradients of ``params`` over ranks, in one flat buffer.

    Parameters whose gradient is None on this rank take part as zeros; they stay None afterwards only if the reduced
    gradient is exactly zero and the local one was None (e.g. the last level's dead ``fc2``).
    """
    info = world_info()
    if not info.distributed:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    if op == "mean":
        flat /= info.world_size
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset:offset + n].view_as(p).to(p.dtype)
        offset += n
        if p.grad is None:
            if bool(g.any()):
                p.grad = g.clone()
        else:
            p.grad.copy_(g)


def broadcast_parameters(params: Iterable[torch.Tensor], src: int = 0) -> None:
    """Copy ``params`` from rank ``src`` to all ranks (identical fresh adapters everywhere)."""
    if not world_info().distributed:
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=src)


def shard(indices: Sequence[int] | torch.Tensor, rank: int | None = None, world_size: int | None = None):
    """This rank's contiguous slice of a global batch (ranks get sizes differing by at most one)."""
    info = world_info()
    rank = info.rank if rank is None else rank
    world_size = info.world_size if world_size is None else world_size
    n = len(indices)
    start = (n * rank) // world_size
    stop = (n * (rank + 1)) // world_size
    return indices[start:stop]
