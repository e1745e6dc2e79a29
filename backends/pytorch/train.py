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

Metrics: one JSON line per epoch in the run's ``metrics.jsonl``: ``{"cmd": "train", "epoch",
"lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from cnas_ir.errors import CnasError, InputError, RunFailure
from cnas_ir.format import atomic_write
from cnas_ir.ir import BUNDLE_COLUMNS, GROUP_COLUMNS, VERTEX_COLUMNS, Graph
from cnas_ir.rundir import RunDir
from cnas_ir.spec import TrainSpec

from .data import Augment, Split, Splits, load_dataset

__all__ = [
    "CHECKPOINT_FORMAT",
    "TrainInterrupted",
    "cosine_lr",
    "cpu_threads",
    "evaluate",
    "evaluate_module",
    "pick_device",
    "train",
]

CHECKPOINT_FORMAT = "cnas-ir-checkpoint"
_CHECKPOINT_VERSION = 1
_EVAL_BATCH = 512
_SMALL_WORK = 32768  # input pixels per batch below which a CPU run uses one thread


class TrainInterrupted(CnasError):
    """Training stopped on SIGINT (Ctrl-C); the checkpoint of the last completed epoch is on
    disk. The CLI exits with code 130, the shell's code for SIGINT."""

    exit_code = 130


# ---- pieces ------------------------------------------------------------------------------------


def pick_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``; ``cuda`` (refused when absent)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device cuda: CUDA is not available to this torch {torch.__version__}")
        return torch.device("cuda")
    raise InputError(f"--device {device!r}: expected auto, cpu or cuda")


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


def _fingerprint(graph: Graph, data: str, augment: Augment, reinit: bool, seed: int) -> str:
    """What a checkpoint must have started from to be resumed: structure, spec, starting
    weights and settings (not the epoch count: a run may be extended)."""
    h = hashlib.sha256()
    h.update(graph.spec.to_json().encode())
    for name in GROUP_COLUMNS + VERTEX_COLUMNS + BUNDLE_COLUMNS:
        h.update(name.encode())
        h.update(np.ascontiguousarray(getattr(graph, name)).tobytes())
    if not reinit:
        for name in sorted(graph.weights):
            h.update(name.encode())
            h.update(np.ascontiguousarray(graph.weights[name]).tobytes())
    h.update(json.dumps([data, repr(augment), reinit, seed]).encode())
    return h.hexdigest()


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


# ---- checkpoints -------------------------------------------------------------------------------


def _checkpoint_path(run: RunDir, name: str) -> Path:
    return run.checkpoints / f"{name}.safetensors"


def _save_checkpoint(
    path: Path, module: torch.nn.Module, opt: torch.optim.Optimizer, epoch: int, epochs: int, fingerprint: str
) -> None:
    tensors: dict[str, torch.Tensor] = {
        f"module.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()
    }
    for i, state in opt.state_dict()["state"].items():
        buf = state.get("momentum_buffer")
        if buf is not None:
            tensors[f"optim.{i}.momentum_buffer"] = buf.detach().cpu().contiguous()
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": str(_CHECKPOINT_VERSION),
        "fingerprint": fingerprint,
        "epoch": str(epoch),
        "epochs": str(epochs),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, st_save(tensors, metadata=meta))


def _load_checkpoint(path: Path, module: torch.nn.Module, opt: torch.optim.Optimizer, fingerprint: str) -> int:
    """Restore module and optimizer state from ``path``; returns the completed epoch count."""
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint to resume (run `cnas-ir train` without --resume)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 -- safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{path}: corrupt checkpoint ({e})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a cnas-ir training checkpoint")
    if meta.get("version") != str(_CHECKPOINT_VERSION):
        raise InputError(
            f"{path}: checkpoint version {meta.get('version')!r}, this cnas-ir reads {_CHECKPOINT_VERSION}"
        )
    if meta.get("fingerprint") != fingerprint:
        raise InputError(
            f"{path}: checkpoint is of another graph, spec, dataset or seed than this run "
            f"(start without --resume to train from scratch)"
        )
    state = {k.removeprefix("module."): v for k, v in tensors.items() if k.startswith("module.")}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"{path}: checkpoint does not fit the module ({str(e).splitlines()[0]})") from None
    sd = opt.state_dict()
    sd["state"] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, key = k.split(".", 2)
            sd["state"].setdefault(int(i), {})[key] = v
    opt.load_state_dict(sd)
    return int(meta.get("epoch", "0"))


# ---- evaluation --------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_module(
    module: torch.nn.Module, split: Split, device: torch.device, batch_size: int = _EVAL_BATCH
) -> dict[str, float]:
    """Mean cross-entropy ``loss``, ``accuracy`` in [0, 1] and ``n`` of ``module`` (eval mode)
    on ``split`` (images float32 [N, C, H, W], labels int64 [N])."""
    was_training = module.training
    module.eval()
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = len(split)
    for i in range(0, n, batch_size):
        x = split.images[i : i + batch_size].to(device, non_blocking=True)
        y = split.labels[i : i + batch_size].to(device, non_blocking=True)
        logits = module(x)
        loss += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    module.train(was_training)
    return {"loss": float(loss) / max(n, 1), "accuracy": int(correct) / max(n, 1), "n": n}


def evaluate(
    graph: Graph,
    split: str = "test",
    data: Splits | None = None,
    device: str = "auto",
    batch_size: int = _EVAL_BATCH,
    threads: int | None = None,
) -> dict[str, float]:
    """Loss, accuracy and sample count of ``graph``'s trained network on one split.

    ``data`` defaults to the dataset of ``graph.spec``. A graph without weights is refused.
    ``threads``: CPU intra-op threads (default: one for small inputs, else torch's default).
    """
    from .lower import lower

    if not graph.weights:
        raise InputError("the graph has no weights to evaluate: train it first (`cnas-ir train`)")
    splits = data if data is not None else load_dataset(graph.spec)
    dev = pick_device(device)
    module = lower(graph, "compact")  # loads graph.weights
    with cpu_threads(dev, graph, threads):
        return evaluate_module(module.to(dev), splits.split(split), dev, batch_size)


# ---- training ----------------------------------------------------------------------------------


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
    called after every optimizer step (0-based; for progress hooks and tests).

    Raises :class:`TrainInterrupted` on Ctrl-C (after saving nothing partial),
    :class:`RunFailure` when the loss stops being finite, :class:`InputError` for bad settings.
    """
    from .lower import lower, to_graph

    recipe = graph.spec.train
    epochs = recipe.epochs if epochs is None else epochs
    if epochs < 0:
        raise InputError(f"--epochs {epochs}: must be >= 0")
    if resume and run is None:
        raise InputError("resume needs a run directory holding the checkpoint")
    seed = recipe.seed if seed is None else seed
    splits = data if data is not None else load_dataset(graph.spec)
    aug = splits.augment if augment is None else augment
    dev = pick_device(device)

    # The run seeds torch's global generator (initialisation, dropout); fork it so the
    # caller's random state is the same after the call as before.
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)  # the initialisation of whatever the graph holds no weights for
        module = lower(graph, "compact", weights=not reinit).to(dev)
        opt = torch.optim.SGD(
            module.parameters(),
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov and recipe.momentum > 0,  # torch refuses Nesterov without momentum
            weight_decay=recipe.weight_decay,
        )
        fingerprint = _fingerprint(graph, splits.name, aug, reinit, seed)
        ckpt = _checkpoint_path(run, checkpoint) if run is not None else None
        first = 0
        if resume:
            assert ckpt is not None
            first = _load_checkpoint(ckpt, module, opt, fingerprint)
            if first > epochs:
                raise InputError(f"--epochs {epochs}: the checkpoint {ckpt} already has {first} epochs")
        elif ckpt is not None:
            ckpt.unlink(missing_ok=True)  # a fresh run: an old checkpoint must not be resumed into it

        train_split = splits.train.to(dev)
        n = len(train_split)
        bs = min(recipe.batch_size, n)
        iters = -(-n // bs)
        bar = _progress_bar(progress, total=(epochs - first) * iters, desc=f"train {graph.spec.name}")
        with cpu_threads(dev, graph, threads), _deterministic(dev.type == "cpu"), _sigint_flag() as flag, bar:
            for epoch in range(first, epochs):
                t0 = time.perf_counter()
                torch.manual_seed(_derive(seed, epoch, "dropout"))
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(_derive(seed, epoch, "shuffle")))
                gen_aug = torch.Generator().manual_seed(_derive(seed, epoch, "augment"))
                module.train()
                loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
                correct = torch.zeros((), dtype=torch.int64, device=dev)
                lr = recipe.lr
                for it in range(iters):
                    idx = perm[it * bs : (it + 1) * bs].to(dev)
                    x, y = train_split.images[idx], train_split.labels[idx]
                    if aug.active:
                        x = aug(x, gen_aug)
                    lr = cosine_lr(epoch + it / iters, recipe)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    logits = module(x)
                    loss = F.cross_entropy(logits, y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    loss_sum += loss.detach().double() * len(y)
                    correct += (logits.detach().argmax(1) == y).sum()
                    bar.update(1)
                    if on_step is not None:
                        on_step(epoch, it)
                    if flag["stop"]:
                        raise _interrupted(epoch, epochs, ckpt)
                train_loss = float(loss_sum) / n
                if not math.isfinite(train_loss):
                    raise RunFailure(
                        f"training diverged in epoch {epoch + 1} (train loss {train_loss}); lower train.lr in the spec"
                    )
                val = evaluate_module(module, splits.val, dev)
                if ckpt is not None:
                    _save_checkpoint(ckpt, module, opt, epoch + 1, epochs, fingerprint)
                record = {
                    "cmd": "train",
                    "epoch": epoch + 1,
                    "lr": lr,
                    "train_loss": train_loss,
                    "train_acc": int(correct) / n,
                    "val_loss": val["loss"],
                    "val_acc": val["accuracy"],
                    "seconds": round(time.perf_counter() - t0, 3),
                }
                if run is not None:
                    run.log(record)
                bar.set_postfix(loss=f"{train_loss:.3f}", val_acc=f"{val['accuracy']:.3f}")
                if flag["stop"] and epoch + 1 < epochs:
                    raise _interrupted(epoch + 1, epochs, ckpt)
            val = evaluate_module(module, splits.val, dev)
            test = evaluate_module(module, splits.test, dev)
        module.cpu()
        out = to_graph(graph, module)
        return out.with_event(
            {
                "pass": "train",
                "epochs": epochs,
                "data": splits.name,
                "reinit": reinit,
                "seed": seed,
                "val_acc": round(val["accuracy"], 6),
                "test_acc": round(test["accuracy"], 6),
            }
        )


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
