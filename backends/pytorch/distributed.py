"""PyTorch distributed helpers: one process per device under ``torchrun`` (SPEC §8).

``torchrun --nproc-per-node N -m cnas_ir train|prune ...`` starts N copies of the command with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous address) in their environment;
:func:`process_group` joins them into one group -- NCCL on CUDA, gloo on CPU -- and leaves it
at the end. Outside torchrun (no ``WORLD_SIZE`` > 1) every helper is the single-process
identity: rank 0 of 1, ``shard`` returns all indices, reductions and barriers do nothing, so
the trainer and the saliency run the same code either way.

What the backend does with these (see ``train.py`` and ``saliency.py``):

- every rank sees its shard of each epoch's shuffle permutation (:func:`shard`, the rule of
  ``torch.utils.data.DistributedSampler``: pad to a multiple of the world size with the
  permutation's first entries, then take every ``world_size``-th entry from ``rank``);
- the spec's ``batch_size`` is the *global* batch, each rank takes ``batch_size // world``;
- gradients are averaged by DistributedDataParallel, saliency scores summed by
  :func:`all_reduce_sum` before ranking, so every rank prunes the same vertices;
- only rank 0 writes files and shows progress (:func:`rank0_writes`, :func:`is_rank0`).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

__all__ = [
    "all_reduce_sum",
    "barrier",
    "cleanup",
    "init",
    "is_distributed",
    "is_rank0",
    "launched_by_torchrun",
    "local_rank",
    "process_group",
    "rank",
    "rank0_writes",
    "restarted",
    "shard",
    "world_size",
]


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    """This process's index on its node (torchrun's ``LOCAL_RANK``; 0 outside torchrun):
    the CUDA device it drives."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def restarted() -> bool:
    """Whether torchrun restarted the workers after a failure (``TORCHELASTIC_RESTART_COUNT``
    > 0): a run should then continue from its checkpoint instead of starting over."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def is_distributed() -> bool:
    """Whether a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_rank0() -> bool:
    return rank() == 0


def init(device: torch.device) -> bool:
    """Join the process group torchrun's environment describes: NCCL for a CUDA ``device``
    (bound to ``cuda:LOCAL_RANK``), gloo for CPU. Returns whether it initialised one (False
    outside torchrun or when a group exists already)."""
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return False
    # torchrun's env:// rendezvous, with the keys of each restart under their own prefix: the
    # agent's store outlives a restart, and without the prefix the restarted workers read the
    # dead workers' addresses and fail to connect (seen with torch 2.13 and gloo).
    store, r, w = next(dist.rendezvous("env://"))
    store = dist.PrefixStore(f"cnas-ir/restart{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank())
        # device_id (torch >= 2.3) binds the group to this GPU and connects NCCL eagerly
        bind = {"device_id": torch.device("cuda", local_rank())}
        if "device_id" not in inspect.signature(dist.init_process_group).parameters:
            bind = {}
        dist.init_process_group("nccl", store=store, rank=r, world_size=w, **bind)
    else:
        dist.init_process_group("gloo", store=store, rank=r, world_size=w)
    return True


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """``init(device)`` for the body, and leave the group afterwards if this call joined it."""
    joined = init(device)
    try:
        yield
    finally:
        if joined:
            cleanup()


def barrier() -> None:
    """Wait until every rank gets here."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (every rank gets the same sum); returns it.
    The tensor must be on the backend's device (CUDA for NCCL, CPU for gloo)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard(indices: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``indices`` (int64 [N]) -- DistributedSampler's rule (no
    drop_last): pad to a multiple of the world size by repeating the first entries, then take
    every ``world_size``-th entry starting at ``rank``. The shards are disjoint (but for the
    padding), of equal length ``ceil(N / world)``, and together the whole of ``indices``.

    Contiguous batches of ``b`` from every shard make up contiguous batches of
    ``b * world`` of ``indices``: step ``i`` of all ranks together sees exactly the global
    batch ``indices[i*b*world : (i+1)*b*world]``.
    """
    w = world_size()
    if w == 1:
        return indices
    pad = -len(indices) % w
    if pad:
        # repeat the permutation as often as needed (more than once only when N < world)
        reps = -(-pad // max(len(indices), 1))
        indices = torch.cat([indices, indices.repeat(reps)[:pad]])
    return indices[rank() :: w]


@contextlib.contextmanager
def rank0_writes() -> Iterator[bool]:
    """``with rank0_writes() as writer: if writer: write(...)`` -- the body writes on rank 0
    only (it is given True there, False elsewhere), and every rank waits at the end until rank
    0 is done, so what it wrote exists for all ranks afterwards. A single process just writes."""
    yield is_rank0()
    barrier()
