"""Which memory layout trains faster on this CPU: NCHW or channels_last, per search space.

``cnas-ir train`` keeps weights and batches in channels_last by default (``--layout nchw`` to
change it); this is the measurement behind that default. Per space, the one-shot graph and the
graph pruned at random (``random_saliency``) to ``--rho``, folded, each lowered compact with the
lowering's seeded initialisation and calibrated BN statistics (bench_speed.calibrated), each in
NCHW and in channels_last (module and input converted). Timed: one training step at
``--batch``, ``zero_grad(set_to_none=True)``, a train-mode forward, ``F.cross_entropy``,
``.backward()`` (no optimizer step); one warm-up call each, then ``--rounds`` interleaved rounds
of all four, medians. Spaces: ``densenet`` (DenseNet-BC, k = 12, depth 40, at rho 0.7) and
``nasnet`` (the paper config with spatial dropout off, as bench_perf.py, at rho 0.46).
``OMP_WAIT_POLICY`` defaults to PASSIVE and ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` to 16384 (see
bench_speed.py). About 2 minutes on the 2-core build machine::

    python benchmarks/bench_layout.py [--spaces densenet nasnet] [--batch 32] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import calibrated, race  # noqa: E402

import cnas_ir  # noqa: E402
from cnas_ir.backends.pytorch import lower  # noqa: E402
from cnas_ir.passes.fold import fold  # noqa: E402
from cnas_ir.passes.prune import prune_to_rho, random_saliency  # noqa: E402

SPACES = {
    "densenet": ({"name": "densenet-40", "space": "densenet", "densenet": {"growth_rate": 12, "depth": 40}}, 0.7),
    "nasnet": ({"name": "p", "nasnet": {"spatial_dropout": 0.0}}, 0.46),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spaces", nargs="+", choices=list(SPACES), default=list(SPACES))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.rounds} rounds, medians")
    for space in args.spaces:
        spec, rho = SPACES[space]
        one_shot = cnas_ir.build(spec)
        pruned = fold(prune_to_rho(one_shot, rho, score=lambda h: random_saliency(h, args.seed), criterion="random"))
        size, channels = one_shot.spec.input.size, one_shot.spec.input.channels
        x = torch.randn(args.batch, channels, size, size)
        y = torch.randint(0, one_shot.spec.classes, (args.batch,))
        steps = {}
        for name, g in (("one-shot", one_shot), ("compact", pruned)):
            torch.manual_seed(args.seed)
            m = lower(calibrated(g, args.seed), "compact").train()
            for layout, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
                mm, xx = copy.deepcopy(m).to(memory_format=fmt), x.contiguous(memory_format=fmt)

                def step(mm: torch.nn.Module = mm, xx: torch.Tensor = xx, y: torch.Tensor = y) -> None:
                    mm.zero_grad(set_to_none=True)
                    F.cross_entropy(mm(xx), y).backward()

                steps[f"{name} {layout}"] = step
        med = race(steps, args.rounds)
        print(f"{space} (rho {rho}): training step ms")
        for name in ("one-shot", "compact"):
            a, b = (med[f"{name} {lay}"] * 1e3 for lay in ("nchw", "channels_last"))
            print(f"  {name:9s} nchw {a:8.1f}  channels_last {b:8.1f}  (channels_last / nchw {b / a:.2f})")


if __name__ == "__main__":
    main()
