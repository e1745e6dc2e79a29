"""Eval latency of the lowered paper network: one-shot vs masked vs compact (SPEC §5).

The paper config is pruned at random to rho = 0.46 (x vertices killed uniformly at random until
cell parameters / one-shot cell parameters <= rho; nothing else is propagated), then three
modules are timed in eval mode on CIFAR-sized inputs:

- ``one-shot``: the unpruned graph lowered in compact mode (every vertex live),
- ``masked``:   the pruned graph as the dense one-shot network with 0/1 masks,
- ``compact``:  the pruned graph with only live vertices as weights.

Runs are interleaved (one of each module per round) and the median is reported, so a slow
period of the machine hits every module alike. Usage::

    python benchmarks/bench_lower.py [--repeats 7] [--batch-sizes 32,1] [--threads 2]

``OMP_WAIT_POLICY`` defaults to PASSIVE here: on a machine whose cores are shared, OpenMP's
spinning threads wait on each other at every one of the ~460 small convs (5-10x slower at
batch 1 on a 2-core box under load). Set it in the environment to override.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cnas_ir.backends.pytorch import CnasModule, lower  # noqa: E402
from cnas_ir.ir import Graph  # noqa: E402
from cnas_ir.passes.build import build_graph  # noqa: E402
from cnas_ir.passes.stats import compute_stats  # noqa: E402
from cnas_ir.spec import parse_spec  # noqa: E402

__all__ = ["main", "random_prune"]


def random_prune(g: Graph, rho: float, seed: int) -> Graph:
    """Kill x vertices uniformly at random until cell params / one-shot cell params <= rho."""
    rng = np.random.default_rng(seed)
    stats = compute_stats(g)
    total, live = stats.total.params, stats.total.params_live
    order = rng.permutation(g.x_ids[g.alive[g.x_ids]])
    saved = np.cumsum(g.x_cost[order])
    # the first prefix of the random order whose removal reaches rho
    k = int(np.searchsorted(-(live - saved), -rho * total)) + 1
    alive = g.alive.copy()
    alive[order[:k]] = False
    return g.replace(alive=alive)


def calibrate(m: CnasModule, size: int) -> None:
    """Give BN running statistics of a real forward pass: defaults let activations explode
    over 20 cells, and inf/denormal arithmetic would distort the timings."""
    for bn in m.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.momentum = None
    m.train()
    with torch.no_grad():
        m(torch.randn(8, 3, size, size))
    m.eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds per batch size (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds per batch size")
    ap.add_argument("--batch-sizes", default="32,1", help="comma-separated batch sizes")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--rho", type=float, default=0.46)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    batches = [int(b) for b in args.batch_sizes.split(",")]

    g = build_graph(parse_spec({"name": "paper"}))
    pruned = random_prune(g, args.rho, args.seed)
    size = g.spec.input.size
    full_stats, stats = compute_stats(g), compute_stats(pruned)
    models = {
        "one-shot": (lower(g, "compact"), full_stats.model_params, full_stats.macs),
        "masked": (lower(pruned, "masked"), stats.model_params, stats.macs),
        "compact": (lower(pruned, "compact"), stats.model_params_live, stats.macs_live),
    }
    for m, params, _ in models.values():
        assert m.num_parameters() == params  # the modules hold what stats counts
        calibrate(m, size)

    times: dict[tuple[str, int], list[float]] = {}
    with torch.inference_mode():
        for batch in batches:
            x = torch.randn(batch, 3, size, size)
            for r in range(args.warmup + args.repeats):
                for name, (m, _, _) in models.items():
                    t0 = time.perf_counter()
                    m(x)
                    if r >= args.warmup:
                        times.setdefault((name, batch), []).append(time.perf_counter() - t0)

    print(
        f"paper config, random pruning to rho={stats.rho:.4f} (target {args.rho}), threads={args.threads}, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
        f"torch {torch.__version__}, median of {args.repeats}"
    )
    print(f"multiply-adds one-shot / live: {stats.macs:,} / {stats.macs_live:,} = {stats.macs / stats.macs_live:.2f}x")
    head = f"| {'module':<9} | {'params':>10} | {'MACs/image':>14} |"
    for b in batches:
        head += f" {f'batch {b} ms':>12} | {'speedup':>7} |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for name, (_, params, macs) in models.items():
        row = f"| {name:<9} | {params:>10,} | {macs:>14,} |"
        for b in batches:
            t = statistics.median(times[(name, b)])
            base = statistics.median(times[("one-shot", b)])
            row += f" {t * 1e3:>12.1f} | {base / t:>6.2f}x |"
        print(row)


if __name__ == "__main__":
    main()
