"""Before/after of a change to the PyTorch lowering, in one process: the PyTorch backend at a
git revision against the working tree's.

The old ``backends/pytorch/`` is extracted with ``git archive REV`` and loaded as a package of
its own (``old_pytorch``, without its ``__init__``), so the old ``lower.py`` imports its old
siblings (``buffered``, ``fused``, ...); the core (``cnas_ir``, ``passes``) is the working
tree's. Both lower the same pruned graph (same weights), and their eval-mode forwards under
``torch.inference_mode`` are timed in interleaved rounds (medians), in channels_last and
channels-first. The outputs must agree to float32 rounding. ``--train`` times a training step
instead (zero_grad, forward in training mode, cross-entropy, backward; no optimizer step), at
the first batch size only, in channels_last. Config: a bench_speed.py configuration (default:
the paper spec pruned at random to rho 0.46)::

    python benchmarks/bench_ab.py REV [--config paper-random-0.46] [--batches 32 1] [--rounds 7] [--train]
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")  # see bench_speed.py

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import CONFIGS, ROOT, make_config, race  # noqa: E402

NEW = importlib.import_module("cnas_ir.backends.pytorch.lower")


def old_lowering(rev: str, folder: str):  # noqa: ANN201 - a module
    """``lower`` of the PyTorch backend at ``rev``: the package's files extracted into ``folder``."""
    tar = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "backends/pytorch"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=tar, check=True)
    package = types.ModuleType("old_pytorch")
    package.__path__ = [str(Path(folder) / "backends" / "pytorch")]  # relative imports resolve here
    sys.modules["old_pytorch"] = package
    return importlib.import_module("old_pytorch.lower")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", help="git revision of the 'before' PyTorch backend")
    ap.add_argument("--config", default="paper-random-0.46", choices=CONFIGS)
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 1])
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds at batch 32 (batch 1: 3x as many)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train", action="store_true", help="time a training step (first batch size, channels_last)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        old_mod = old_lowering(args.rev, tmp)
        cfg = make_config(args.config, 0)
        size, channels = cfg.pruned.spec.input.size, cfg.pruned.spec.input.channels
        print(f"torch {torch.__version__}, {args.threads} threads; {args.config}; before: {args.rev}")
        if args.train:
            train_race(old_mod, cfg.pruned, args.batches[0], args.rounds)
            return
        for batch in args.batches:
            rounds = args.rounds if batch > 1 else 3 * args.rounds
            for fmt, lay in ((torch.channels_last, "channels_last"), (torch.contiguous_format, "channels-first")):
                x = torch.randn(batch, channels, size, size).contiguous(memory_format=fmt)
                models = {
                    "before": old_mod.lower(cfg.pruned, "compact").eval().to(memory_format=fmt),
                    "after": NEW.lower(cfg.pruned, "compact").eval().to(memory_format=fmt),
                }
                with torch.inference_mode():
                    diff = (models["after"](x) - models["before"](x)).abs().max().item()
                    med = race({k: (lambda m=m, x=x: m(x)) for k, m in models.items()}, rounds)
                b, a = (med[k] * 1e3 for k in ("before", "after"))
                print(f"batch {batch:2d} {lay:14s}: before {b:7.1f} ms, after {a:7.1f} ms ({a / b:.2f}x); "
                      f"max |after - before| {diff:.1e}")  # fmt: skip


def train_race(old_mod: types.ModuleType, graph: object, batch: int, rounds: int) -> None:
    """Training steps of the two lowerings in channels_last, interleaved; their losses must agree."""
    spec = graph.spec  # type: ignore[attr-defined]
    fmt = torch.channels_last
    x = torch.randn(batch, spec.input.channels, spec.input.size, spec.input.size).contiguous(memory_format=fmt)
    y = torch.randint(0, spec.classes, (batch,))
    models = {
        "before": old_mod.lower(graph, "compact").train().to(memory_format=fmt),
        "after": NEW.lower(graph, "compact").train().to(memory_format=fmt),
    }

    def step(m: torch.nn.Module) -> float:
        m.zero_grad(set_to_none=True)
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        return loss.item()

    losses = []
    for m in models.values():
        torch.manual_seed(0)  # the same dropout draws
        losses.append(step(m))
    diff = abs(losses[1] - losses[0])
    med = race({k: (lambda m=m: step(m)) for k, m in models.items()}, rounds)
    b, a = (med[k] * 1e3 for k in ("before", "after"))
    print(f"training step, batch {batch}, channels_last: before {b:7.1f} ms, after {a:7.1f} ms ({a / b:.2f}x); "
          f"|loss after - before| {diff:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
