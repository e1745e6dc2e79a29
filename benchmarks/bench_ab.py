"""Before/after of a change to the PyTorch lowering, in one process: ``lower.py`` at a git
revision against the working tree's.

The old ``backends/pytorch/lower.py`` is read with ``git show REV:...`` and loaded as a separate
module; both lower the same pruned graph (same weights), and their eval-mode forwards under
``torch.inference_mode`` are timed in interleaved rounds (medians), in channels_last and
channels-first. The outputs must agree to float32 rounding. Config: a bench_speed.py
configuration (default: the paper spec pruned at random to rho 0.46)::

    python benchmarks/bench_ab.py REV [--config paper-random-0.46] [--batches 32 1] [--rounds 7]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")  # see bench_speed.py

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import CONFIGS, ROOT, make_config, race  # noqa: E402

NEW = importlib.import_module("cnas_ir.backends.pytorch.lower")


def old_lowering(rev: str, folder: str):  # noqa: ANN201 - a module
    src = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:backends/pytorch/lower.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(folder) / "old_lower.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_lower", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", help="git revision of the 'before' lower.py")
    ap.add_argument("--config", default="paper-random-0.46", choices=CONFIGS)
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 1])
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds at batch 32 (batch 1: 3x as many)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        old_mod = old_lowering(args.rev, tmp)
        cfg = make_config(args.config, 0)
        size, channels = cfg.pruned.spec.input.size, cfg.pruned.spec.input.channels
        print(f"torch {torch.__version__}, {args.threads} threads; {args.config}; before: lower.py at {args.rev}")
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


if __name__ == "__main__":
    main()
