"""Training and evaluation of a graph's network with the paper's recipe (SPEC §8).

The recipe comes from ``graph.spec.train``: SGD with Nesterov momentum (0.9), weight decay
(2e-4) and a cosine learning rate with warm restarts (lr 0.05 down to lr_min 1e-4, first
period T0 = 10 epochs, each next period T_mul = 2 times longer). The rate is a pure function of
the fractional epoch (:func:`cosine_lr`), set before every step -- SGDR's formula, the same as
``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`` stepped with fractional epochs, but
with no scheduler state to save. Spatial dropout is part of the lowered module.

Reproducibility: every epoch draws its shuffling, augmentation and dropout from generators
seeded with (seed, epoch), so a run is a function of its starting weights and seed, and a run
resumed at an epoch boundary replays exactly what an uninterrupted run would have. On CPU,
torch's deterministic algorithms are switched on for the run.

Checkpoints: after every epoch ``<run>/checkpoints/<name>.safetensors`` is replaced atomically
(temp file + rename). It holds the module's state dict (``module.*``), the optimizer's momentum
buffers (``optim.<i>.momentum_buffer``) and, in the safetensors metadata, the completed epoch
count and a fingerprint of the starting graph and settings. No pickle and no ``torch.load``:
loading a checkpoint executes nothing. ``resume=True`` continues from it and refuses a
checkpoint of another graph, spec, dataset or seed.

Data: a split in memory (a :class:`~.data.Split`) is indexed and augmented as whole batches on
the device; a streamed image folder (a :class:`~.data.StreamSplit`) is decoded and augmented per
image in DataLoader workers, its epoch order the same seeded permutation, sharded by a
DistributedSampler under torchrun, its draws seeded per (epoch, image). The trained graph keeps
the data's name, normalisation and class names (``Graph.data``).

Metrics: one JSON line per epoch in the run's ``metrics.jsonl``: ``{"cmd": "train", "epoch",
"lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"}``.

Distributed (under ``torchrun``, see ``distributed.py``): the compact module is wrapped in
DistributedDataParallel. ``batch_size`` is the *global* batch: each epoch's permutation is
sharded by rank (DistributedSampler's rule) and every rank steps on ``batch_size // world``
images of its shard, so with a batch size divisible by the world size each step sees the same
images as a single process would, and DDP's averaged gradient is that batch's mean gradient.
BatchNorm normalises with each rank's own batch statistics (no SyncBatchNorm: the paper's
network is BN-per-device like any DDP model); the running statistics are averaged over the
ranks at the end of every epoch, so all ranks hold identical weights and buffers after it.
Each rank draws its own dropout and augmentation streams (rank 0 the single-process ones).
Rank 0 alone writes checkpoints and metrics and shows progress; a barrier follows each
checkpoint, and on ``--resume`` every rank loads that file (the run directory must be visible
to every node). When torchrun restarts failed workers (``--max-restarts``), a run resumes by
itself from a checkpoint that matches it. Ctrl-C: torchrun forwards the signal, so workers see
a second one and stop at once; the last epoch's checkpoint is whole and ``--resume`` continues.

Precision and layout: ``amp="bf16"`` runs forward and loss under ``torch.autocast`` with
bfloat16 (CUDA or CPU; no loss scaling is needed for bf16), weights and optimizer stay float32;
``channels_last=True`` (the default) stores the module's 4-D weights and the batches in NHWC
order: the order of the compact NASNet's state buffers (``buffered.py``), faster on CPU for the
DenseNet-BC space too (BENCHMARKS.md), and what tensor-core convolutions prefer; False keeps NCHW.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler

from cnas_ir.errors import CnasError, InputError, RunFailure
from cnas_ir.ir import Graph
from cnas_ir.rundir import RunDir
from cnas_ir.spec import TrainSpec

from . import distributed
from .checkpoint import checkpoint_path, load_checkpoint, resumable, run_fingerprint, save_checkpoint
from .data import Augment, Split, Splits, load_dataset
from .folder import AnySplit, ShardSampler, StreamSplit

__all__ = [
    "AMP",
    "TrainInterrupted",
    "autocast",
    "cosine_lr",
    "cpu_threads",
    "eval_batches",
    "evaluate",
    "evaluate_module",
    "pick_device",
    "sgd",
    "train",
]

_EVAL_BATCH = 512
_SMALL_WORK = 32768  # input pixels per batch below which a CPU run uses one thread
AMP = ("off", "bf16")  # mixed-precision modes of --amp


class TrainInterrupted(CnasError):
    """Training stopped on SIGINT (Ctrl-C); the checkpoint of the last completed epoch is on
    disk. The CLI exits with code 130, the shell's code for SIGINT."""

    exit_code = 130


# ---- pieces ------------------------------------------------------------------------------------


def pick_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``; ``cuda`` (refused when absent).
    Under torchrun, CUDA means this process's own GPU, ``cuda:LOCAL_RANK``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device cuda: CUDA is not available to this torch {torch.__version__}")
        return (
            torch.device("cuda", distributed.local_rank())
            if distributed.launched_by_torchrun()
            else torch.device("cuda")
        )
    raise InputError(f"--device {device!r}: expected auto, cpu or cuda")


def sgd(parameters: Any, recipe: TrainSpec) -> torch.optim.SGD:
    """The recipe's optimizer: SGD with its learning rate, momentum, Nesterov and weight decay."""
    return torch.optim.SGD(
        parameters,
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov and recipe.momentum > 0,  # torch refuses Nesterov without momentum
        weight_decay=recipe.weight_decay,
    )


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """The mixed-precision context of ``--amp``: bf16 autocast on ``device``, or nothing."""
    if amp not in AMP:
        raise InputError(f"--amp {amp!r}: expected one of {', '.join(AMP)}")
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cosine_lr(t: float, recipe: TrainSpec) -> float:
    """Learning rate at fractional epoch ``t`` >= 0 (SGDR, Loshchilov & Hutter 2017).

    Periods are T0, T0*T_mul, T0*T_mul^2, ... epochs; within a period of length T_i, at T_cur
    epochs after its restart, ``lr = lr_min + (lr - lr_min) * (1 + cos(pi * T_cur / T_i)) / 2``.
    With the paper's T0 = 10, T_mul = 2, the restarts fall at 10, 30, 70, 150, 310, 630.
    """
    start, period = 0.0, float(recipe.t0)
    while t >= start + period:  # at most ~log2(epochs) periods
        start += period
        period *= recipe.t_mul
    return recipe.lr_min + (recipe.lr - recipe.lr_min) * (1.0 + math.cos(math.pi * (t - start) / period)) / 2.0


def _derive(seed: int, epoch: int, stream: str) -> int:
    """A 63-bit seed for one random stream (shuffle, augment, dropout) of one epoch."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@contextlib.contextmanager
def _sigint_flag() -> Iterator[dict[str, bool]]:
    """While active, a first Ctrl-C only sets ``flag["stop"]`` (the loop stops after the
    current step, leaving the last checkpoint whole); a second one interrupts at once."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be installed from the main thread
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def cpu_threads(device: torch.device, graph: Graph, threads: int | None) -> Iterator[None]:
    """Intra-op threads for a CPU run: ``threads`` if given, else one thread for small work.

    Below about 32k input pixels per batch (the 8x8 digits net: 64 images x 64 pixels) the
    convolutions are too small to split, and with two threads on a busy two-core machine
    OpenMP's waiting made epochs 5-15x slower than with one (measured); bigger inputs keep
    torch's default. The previous setting is restored afterwards.
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    if threads is None:
        work = graph.spec.train.batch_size * graph.spec.input.size**2
        threads = 1 if work < _SMALL_WORK else before
    torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)


# ---- evaluation --------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_module(
    module: torch.nn.Module,
    split: AnySplit,
    device: torch.device,
    batch_size: int = _EVAL_BATCH,
    *,
    shard: bool = False,
    amp: str = "off",
) -> dict[str, float]:
    """Mean cross-entropy ``loss``, ``accuracy`` in [0, 1] and ``n`` of ``module`` (eval mode)
    on ``split`` (images float32 [N, C, H, W], labels int64 [N]).

    ``shard=True`` (every rank must call it): each rank evaluates every ``world``-th image and
    the sums are reduced over the ranks, so all get the numbers of the whole split.
    """
    was_training = module.training
    module.eval()
    # loss, correct, n: float64 holds the counts exactly, and one reduction carries all three
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    start, step = (distributed.rank(), distributed.world_size()) if shard else (0, 1)
    n = len(range(start, len(split), step))
    for x, y in eval_batches(split, start, step, batch_size, pin_memory=device.type == "cuda"):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = module(x)
        sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
        sums[1] += (logits.argmax(1) == y).sum()
    sums[2] = n
    if shard:
        distributed.all_reduce_sum(sums)
    module.train(was_training)
    loss, correct, total = sums.tolist()
    return {"loss": loss / max(total, 1), "accuracy": int(correct) / max(total, 1), "n": int(total)}


def eval_batches(
    split: AnySplit, start: int = 0, step: int = 1, batch_size: int = _EVAL_BATCH, *, pin_memory: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images float32 [n, C, H, W], labels int64 [n]) on the CPU, in order, of every
    ``step``-th image of ``split`` from ``start``: slices of a split in memory (views, no
    copies), decoded evaluation crops of a streamed one."""
    if isinstance(split, StreamSplit):
        yield from split.batches(BatchSampler(range(start, len(split), step), batch_size, False), pin_memory=pin_memory)
        return
    images, labels = split.images[start::step], split.labels[start::step]  # views, no copies
    for i in range(0, len(labels), batch_size):
        yield images[i : i + batch_size], labels[i : i + batch_size]


def _memory_batches(
    split: Split, own: torch.Tensor, bs: int, iters: int, dev: torch.device, aug: Augment, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An epoch's training batches of a split in memory: this rank's indices ``own`` in chunks
    of ``bs``, gathered on the device and augmented there with draws from ``gen``."""
    for it in range(iters):
        idx = own[it * bs : (it + 1) * bs].to(dev)
        x, y = split.images[idx], split.labels[idx]
        if aug.active:
            x = aug(x, gen)
        yield x, y


def evaluate(
    graph: Graph,
    split: str = "test",
    data: Splits | None = None,
    device: str = "auto",
    batch_size: int = _EVAL_BATCH,
    threads: int | None = None,
    cuda_graph: bool = False,
) -> dict[str, float]:
    """Loss, accuracy and sample count of ``graph``'s trained network on one split.

    ``data`` defaults to the dataset of ``graph.spec``. A graph without weights is refused.
    ``threads``: CPU intra-op threads (default: one for small inputs, else torch's default).
    ``cuda_graph``: replay each batch shape from a CUDA graph (:class:`.graphs.CudaGraphReplay`;
    a CUDA device only).
    """
    from .graphs import CudaGraphReplay
    from .lower import lower

    if not graph.weights:
        raise InputError("the graph has no weights to evaluate: train it first (`cnas-ir train`)")
    # an image folder: normalised as the graph was trained, and refused unless of its classes
    splits = data if data is not None else load_dataset(graph.spec, stats=graph.data, classes=graph.data.get("classes"))
    dev = pick_device(device)
    if cuda_graph and dev.type != "cuda":
        raise InputError(f"--cuda-graph: CUDA graph replay needs a CUDA device, and the device is {dev}")
    module: torch.nn.Module = lower(graph, "compact").to(dev)  # loads graph.weights
    if cuda_graph:
        module = CudaGraphReplay(module)
    with cpu_threads(dev, graph, threads):
        return evaluate_module(module, splits.split(split), dev, batch_size)


# ---- training ----------------------------------------------------------------------------------


def _stream(name: str) -> str:
    """The name of a per-rank random stream: rank 0 draws the single-process stream, so a run
    of one process is the same whether or not it could have been distributed."""
    r = distributed.rank()
    return name if r == 0 else f"{name}.rank{r}"


def _unused_parameters(module: torch.nn.Module, sample: torch.Tensor) -> list[str]:
    """Names of the parameters no gradient reaches, found by one eval-mode forward and backward
    of ``sample`` (no running statistics or random draws change). In a compact module these are
    the preprocessing convs of a cell whose operations were all pruned (its output is zeros);
    DistributedDataParallel must be told to expect them, at the cost of a graph walk per step."""
    was_training = module.training
    module.eval()
    params = dict(module.named_parameters())
    with torch.enable_grad():
        out = module(sample).sum()
    grads = torch.autograd.grad(out, list(params.values()), allow_unused=True)
    module.train(was_training)
    return [name for name, g in zip(params, grads, strict=True) if g is None]


def _average_bn_statistics(module: torch.nn.Module) -> None:
    """Replace every BatchNorm's running mean and variance by their average over the ranks
    (each rank tracked its own batches), so all ranks hold the same buffers."""
    world = distributed.world_size()
    if world == 1:
        return
    stats = [
        t
        for m in module.modules()
        if isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None
        for t in (m.running_mean, m.running_var)
    ]
    if not stats:
        return
    flat = distributed.all_reduce_sum(torch.cat([t.reshape(-1) for t in stats])) / world
    with torch.no_grad():
        for t, v in zip(stats, flat.split([t.numel() for t in stats]), strict=True):
            t.copy_(v.view_as(t))


def _any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set on some rank (so that all ranks stop at the same epoch)."""
    if not distributed.is_distributed():
        return flag
    return bool(distributed.all_reduce_sum(torch.tensor([float(flag)], device=device)).item() > 0)


def train(
    graph: Graph,
    *,
    epochs: int | None = None,
    data: Splits | None = None,
    device: str = "auto",
    run: RunDir | None = None,
    resume: bool = False,
    reinit: bool = False,
    progress: bool = True,
    augment: Augment | None = None,
    seed: int | None = None,
    checkpoint: str = "train",
    threads: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
    amp: str = "off",
    channels_last: bool = True,
    compile: bool = False,
) -> Graph:
    """Train ``graph``'s compact network with the recipe of ``graph.spec.train``; return the
    graph holding the trained weights, with a ``train`` event appended to its history.

    ``epochs`` defaults to ``spec.train.epochs``; ``data`` to the spec's dataset;
    ``augment`` to the dataset's default; ``seed`` to ``spec.train.seed``. Weights start from
    ``graph.weights`` when present, else from a fresh initialisation seeded with ``seed``;
    ``reinit=True`` (CNAS-R) ignores the graph's weights. With a ``run`` directory, metrics are
    appended to ``run.metrics`` and a checkpoint named ``checkpoint`` is kept in
    ``run.checkpoints``; ``resume=True`` continues from it. ``threads``: CPU intra-op threads
    (default: one for small inputs, else torch's default). ``on_step(epoch, iteration)`` is
    called after every optimizer step (0-based; for progress hooks and tests). ``amp``: "off"
    or "bf16" (autocast); ``channels_last``: NHWC weights and batches (default), else NCHW.
    ``compile``: the training step's module under ``torch.compile`` (the per-op path, which
    traces as plain tensor code; evaluation stays eager).

    In a process group of several ranks (torchrun), every rank must call it with the same
    arguments: it trains with DistributedDataParallel on each rank's shard of the data and
    returns the same graph on every rank; rank 0 alone writes metrics and checkpoints.

    Raises :class:`TrainInterrupted` on Ctrl-C (after saving nothing partial),
    :class:`RunFailure` when the loss stops being finite, :class:`InputError` for bad settings.
    """
    from torch.nn.parallel import DistributedDataParallel

    from .lower import lower, to_graph

    recipe = graph.spec.train
    epochs = recipe.epochs if epochs is None else epochs
    if epochs < 0:
        raise InputError(f"--epochs {epochs}: must be >= 0")
    if resume and run is None:
        raise InputError("resume needs a run directory holding the checkpoint")
    if amp not in AMP:
        raise InputError(f"--amp {amp!r}: expected one of {', '.join(AMP)}")
    seed = recipe.seed if seed is None else seed
    splits = data if data is not None else load_dataset(graph.spec, stats=graph.data)
    aug = splits.augment if augment is None else augment
    dev = pick_device(device)
    world, rank0 = distributed.world_size(), distributed.is_rank0()
    layout = {"memory_format": torch.channels_last} if channels_last else {}

    # The run seeds torch's global generator (initialisation, dropout); fork it so the
    # caller's random state is the same after the call as before.
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)  # the initialisation of whatever the graph holds no weights for
        module = lower(graph, "compact", weights=not reinit).to(dev, **layout)
        opt = sgd(module.parameters(), recipe)
        fingerprint = run_fingerprint(graph, splits.name, aug, reinit, seed)
        ckpt = checkpoint_path(run, checkpoint) if run is not None else None
        if ckpt is not None and not resume and distributed.restarted():
            # torchrun restarted the workers after a failure: continue this run's checkpoint
            # (when every rank sees one), do not start over.
            resume = not _any_rank(not resumable(ckpt, fingerprint, epochs), dev)
        first = 0
        if resume:
            assert ckpt is not None
            first = load_checkpoint(ckpt, module, opt, fingerprint)  # every rank reads rank 0's file
            if first > epochs:
                raise InputError(f"--epochs {epochs}: the checkpoint {ckpt} already has {first} epochs")
        elif ckpt is not None:
            with distributed.rank0_writes() as writer:
                if writer:
                    ckpt.unlink(missing_ok=True)  # a fresh run: an old checkpoint must not be resumed into it

        train_split = splits.train.to(dev)
        n = len(train_split)
        net: torch.nn.Module = module
        if world > 1:
            unused = _unused_parameters(module, train_split.images[:2].to(dev).contiguous(**layout))
            # BN statistics stay per rank during an epoch (averaged after it), not re-sent from
            # rank 0 before every forward; torch >= 2.13 spells that forward_sync_buffers.
            no_buffer_sync = (
                {"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                else {"broadcast_buffers": False}
            )
            net = DistributedDataParallel(
                module,
                device_ids=[cuda[0]] if cuda else None,
                find_unused_parameters=bool(unused),
                **no_buffer_sync,
            )
        if compile:
            net = torch.compile(net)
        # The spec's batch is global: each rank takes its share of every batch (module docstring).
        per_rank = -(-n // world)
        bs = max(1, min(recipe.batch_size, n) // world)
        iters = -(-per_rank // bs)
        bar = _progress_bar(progress and rank0, total=(epochs - first) * iters, desc=f"train {graph.spec.name}")
        with cpu_threads(dev, graph, threads), _deterministic(dev.type == "cpu"), _sigint_flag() as flag, bar:
            for epoch in range(first, epochs):
                t0 = time.perf_counter()
                torch.manual_seed(_derive(seed, epoch, _stream("dropout")))
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(_derive(seed, epoch, "shuffle")))
                own = distributed.shard(perm)  # the same permutation on every rank, cut by rank
                gen_aug = torch.Generator().manual_seed(_derive(seed, epoch, _stream("augment")))
                net.train()
                sums = torch.zeros(2, dtype=torch.float64, device=dev)  # loss * images, correct
                lr = recipe.lr
                if isinstance(train_split, StreamSplit):
                    batches = train_split.batches(
                        BatchSampler(ShardSampler(perm), bs, drop_last=False),
                        augment=aug,
                        seed=_derive(seed, epoch, _stream("augment")),
                        pin_memory=dev.type == "cuda",
                    )
                else:
                    batches = _memory_batches(train_split, own, bs, iters, dev, aug, gen_aug)
                for it, (xb, yb) in enumerate(batches):
                    x, y = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    lr = cosine_lr(epoch + it / iters, recipe)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    with autocast(dev, amp):
                        logits = net(x)
                        loss = F.cross_entropy(logits, y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sums[0] += loss.detach().double() * len(y)
                    sums[1] += (logits.detach().argmax(1) == y).sum()
                    bar.update(1)
                    if on_step is not None:
                        on_step(epoch, it)
                    if flag["stop"] and world == 1:  # ranks stop together, at the epoch's end
                        raise _interrupted(epoch, epochs, ckpt)
                loss_sum, correct = distributed.all_reduce_sum(sums).tolist()
                seen = per_rank * world  # n, plus the shards' padding
                train_loss = loss_sum / seen
                if not math.isfinite(train_loss):
                    # Raised before this epoch's checkpoint and metrics line: nothing of it is written.
                    kept = (
                        f"checkpoint {ckpt} holds epoch {epoch}" if ckpt is not None and epoch > 0 else "no checkpoint"
                    )
                    raise RunFailure(
                        f"training diverged in epoch {epoch + 1}/{epochs} (train loss {train_loss}); nothing written "
                        f"for it: {kept}, the input artifact is unchanged; lower train.lr in the spec"
                    )
                _average_bn_statistics(module)
                val = evaluate_module(module, splits.val, dev, shard=world > 1, amp=amp)
                with distributed.rank0_writes() as writer:
                    if writer and ckpt is not None:
                        save_checkpoint(ckpt, module, opt, epoch + 1, epochs, fingerprint)
                record = {
                    "cmd": "train",
                    "epoch": epoch + 1,
                    "lr": lr,
                    "train_loss": train_loss,
                    "train_acc": int(correct) / seen,
                    "val_loss": val["loss"],
                    "val_acc": val["accuracy"],
                    "seconds": round(time.perf_counter() - t0, 3),
                }
                if run is not None and rank0:
                    run.log(record)
                bar.set_postfix(loss=f"{train_loss:.3f}", val_acc=f"{val['accuracy']:.3f}")
                if _any_rank(flag["stop"], dev) and epoch + 1 < epochs:
                    raise _interrupted(epoch + 1, epochs, ckpt)
            val = evaluate_module(module, splits.val, dev, shard=world > 1, amp=amp)
            test = evaluate_module(module, splits.test, dev, shard=world > 1, amp=amp)
        module.cpu()
        out = to_graph(graph, module).replace(data=splits.meta)
        event: dict[str, Any] = {
            "pass": "train",
            "epochs": epochs,
            "data": splits.name,
            "reinit": reinit,
            "seed": seed,
            "val_acc": round(val["accuracy"], 6),
            "test_acc": round(test["accuracy"], 6),
        }
        if world > 1:  # how it ran, where that differs from one process in float32
            event["ranks"] = world
        if amp != "off":
            event["amp"] = amp
        return out.with_event(event)


def _interrupted(done: int, epochs: int, ckpt: Path | None) -> TrainInterrupted:
    """The one-line message for Ctrl-C once ``done`` epochs are complete."""
    if ckpt is None:
        return TrainInterrupted(f"training interrupted after {done}/{epochs} epochs; nothing was saved")
    if done == 0:
        return TrainInterrupted(f"training interrupted in epoch 1/{epochs}, before any checkpoint; start it again")
    how = (
        "resume with `cnas-ir train --resume` (same artifact and options)"
        if ckpt.stem == "train"
        else "train(..., resume=True) continues it"
    )
    return TrainInterrupted(f"training interrupted after epoch {done}/{epochs}; checkpoint {ckpt} holds it: {how}")


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kw: Any) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress_bar(progress: bool, total: int, desc: str) -> Any:
    """A tqdm bar on stderr when it is a terminal; otherwise nothing (metrics go to the log)."""
    if not (progress and sys.stderr.isatty()):
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)
