"""The search (CNAS §2.2), end to end: one-shot training if needed, then score -> prune ->
fine-tune until the cells fit rho -- of their parameters (the paper's budget) or of their
multiply-adds per image (``budget="macs"``).

The loop itself is :func:`cnas_ir.passes.prune.prune_to_rho` (numpy only); this module supplies
the PyTorch steps: Taylor saliency, one-epoch fine-tuning between iterations, and the
validation accuracy shown per iteration. Random pruning of an untrained graph with no
fine-tuning never runs a network: its scores and the pruning are array operations.

Under torchrun every rank runs the same search: training and fine-tuning are data-parallel,
saliency is summed over the ranks before ranking, and random scores are seeded alike, so all
ranks prune the same vertices; rank 0 alone logs metrics.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cnas_ir.errors import InputError
from cnas_ir.ir import Graph
from cnas_ir.passes.prune import (
    Iteration,
    check_budget,
    check_rho,
    prune_to_rho,
    random_saliency,
    weight_saliency,
)
from cnas_ir.rundir import RunDir

__all__ = ["SearchSettings", "search"]


def _rank0() -> bool:
    """Rank 0 of a torchrun process group, or a single process (torch not imported for it)."""
    if "torch.distributed" not in sys.modules:
        return True
    from cnas_ir.backends.pytorch.distributed import is_rank0

    return is_rank0()


@dataclass(frozen=True)
class SearchSettings:
    rho: float
    gamma: float = 0.1
    criterion: str = "taylor"  # taylor | random | weight
    seed: int = 0
    finetune_epochs: int = 1
    saliency_batches: int = 100
    device: str = "auto"
    amp: str = "off"  # off | bf16: autocast for training, fine-tuning and saliency
    channels_last: bool = True  # NHWC weights and batches: the faster layout here (BENCHMARKS.md)
    budget: str = "params"  # params | macs: what rho is a fraction of (cnas_ir.passes.prune)


def search(
    graph: Graph,
    settings: SearchSettings,
    *,
    data: Any = None,
    run: RunDir | None = None,
    say: Callable[[str], None] = lambda _: None,
    progress: bool = False,
) -> Graph:
    """Prune ``graph`` to ``settings.rho``; returns the folded, pruned graph (weights kept).

    ``data`` is a :class:`cnas_ir.backends.pytorch.data.Splits` (loaded from the spec when
    needed and not given). ``say`` receives one line per iteration and per notable step (on
    rank 0 of a process group).
    """
    s = settings
    if not _rank0():
        say = lambda _: None  # noqa: E731 -- the other ranks run the same search silently
    if s.criterion not in ("taylor", "random", "weight"):
        raise InputError(f"--criterion {s.criterion!r}: choose taylor, random or weight")
    check_budget(s.budget)
    check_rho(graph, s.rho, s.budget)  # refuse before any training, not after
    if s.criterion == "weight" and not graph.weights:
        raise InputError("the weight criterion needs trained weights: run `cnas-ir train` first")
    budget = "" if s.budget == "params" else ", budget macs"
    say(f"pruning to rho {s.rho} ({s.criterion}, gamma {s.gamma}, fine-tuning {s.finetune_epochs} epoch(s){budget})")
    needs_data = s.criterion == "taylor" or (s.finetune_epochs > 0 and (graph.weights or s.criterion == "taylor"))

    def splits() -> Any:
        nonlocal data
        if data is None:
            from cnas_ir.backends.pytorch.data import load_dataset

            data = load_dataset(graph.spec)
        return data

    if s.criterion == "taylor" and not graph.weights:
        # The paper's step 1: saliency is only meaningful on a trained one-shot model.
        from cnas_ir.backends.pytorch.train import train

        say(f"no trained weights: training the one-shot model first ({graph.spec.train.epochs} epochs, spec's train)")
        graph = train(
            graph, data=splits(), device=s.device, run=run, progress=progress, checkpoint="oneshot", amp=s.amp,
            channels_last=s.channels_last,
        )  # fmt: skip
    finetune_epochs = s.finetune_epochs
    if finetune_epochs > 0 and not graph.weights:
        say("no trained weights: fine-tuning between iterations is skipped (random pruning of an untrained graph)")
        finetune_epochs = 0

    calls = {"n": 0}

    def score(g: Graph) -> Graph:
        calls["n"] += 1
        if s.criterion == "random":
            return random_saliency(g, seed=s.seed * 100_003 + calls["n"])
        if s.criterion == "weight":
            return weight_saliency(g)
        from cnas_ir.backends.pytorch.saliency import taylor_saliency

        return taylor_saliency(
            g, splits().train, batches=s.saliency_batches, device=s.device, seed=s.seed, amp=s.amp,
            channels_last=s.channels_last,
        )  # fmt: skip

    def finetune(g: Graph) -> Graph:
        from cnas_ir.backends.pytorch.train import train

        return train(
            g, epochs=finetune_epochs, data=splits(), device=s.device, run=run, progress=progress,
            checkpoint="finetune", seed=s.seed + calls["n"], amp=s.amp, channels_last=s.channels_last,
        )  # fmt: skip

    def report(it: Iteration, g: Graph) -> None:
        acc = ""
        if g.weights and needs_data:
            from cnas_ir.backends.pytorch.train import evaluate

            acc = f", val acc {evaluate(g, 'val', data=splits(), device=s.device)['accuracy']:.2%}"
        macs = f", cell multiply-adds {it.macs_live:,}, rho_macs {it.rho_macs:.4f}" if it.budget == "macs" else ""
        say(
            f"iteration {it.index}: removed {it.removed:,} x, {it.x_live:,} left, "
            f"cell params {it.params_live:,}, rho {it.rho:.4f}{macs}{acc}"
        )
        if run is not None and _rank0():
            run.log({"cmd": "prune", "iteration": it.index, "removed": it.removed, "x_live": it.x_live,
                     "params_live": it.params_live, "rho": it.rho, "budget": it.budget, "macs_live": it.macs_live,
                     "rho_macs": it.rho_macs})  # fmt: skip

    return prune_to_rho(
        graph,
        s.rho,
        gamma=s.gamma,
        score=score,
        finetune=finetune if finetune_epochs > 0 else None,
        on_iteration=report,
        criterion=s.criterion,
        budget=s.budget,
    )
