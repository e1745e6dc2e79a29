"""Cost of one Taylor saliency minibatch against a plain forward + backward (issue 4).

Same compact module, same batch, measured interleaved in one process; the plain step is a
training step's forward and backward (weight gradients on), the saliency step freezes the
weights and records x * dL/dx at every op's tap. Target: saliency at most 1.2x.

    python benchmarks/bench_saliency.py [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads on a shared 2-core box

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import cnas_ir  # noqa: E402
from cnas_ir.backends.pytorch import lower, to_graph  # noqa: E402
from cnas_ir.backends.pytorch.saliency import TaylorAccumulator  # noqa: E402
from cnas_ir.passes.fold import fold  # noqa: E402
from cnas_ir.passes.prune import prune_to_rho, random_saliency  # noqa: E402


def case(spec, rho: float | None, batch: int, repeats: int) -> tuple[float, float]:
    g = cnas_ir.build(spec)
    if rho is not None:
        g = prune_to_rho(g, rho, score=lambda h: random_saliency(h, 0))
    torch.manual_seed(0)
    g = fold(to_graph(g, lower(g, "compact")))
    s = g.spec
    x = torch.randn(batch, s.input.channels, s.input.size, s.input.size)
    y = torch.randint(0, s.classes, (batch,))
    plain = lower(g, "compact").eval()
    salient = TaylorAccumulator(g, lower(g, "compact").eval())

    def plain_step() -> None:
        plain.zero_grad(set_to_none=True)
        F.cross_entropy(plain(x), y, reduction="sum").backward()

    def saliency_step() -> None:
        salient.step(x.clone(), y)

    for f in (plain_step, saliency_step):  # warm-up: first calls on new shapes are slow
        f()
    t_plain, t_sal = [], []
    for _ in range(repeats):
        for f, out in ((plain_step, t_plain), (saliency_step, t_sal)):
            t0 = time.perf_counter()
            f()
            out.append(time.perf_counter() - t0)
    return statistics.median(t_plain), statistics.median(t_sal)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(0)
    cases = [
        ("tiny.yaml (digits), batch 64", "examples/tiny.yaml", None, 64),
        ("paper config, rho 0.46 random, batch 8", {"name": "p"}, 0.46, 8),
    ]
    print(f"threads {args.threads}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, medians of {args.repeats}")
    print(f"{'case':42s} {'fwd+bwd s':>10s} {'saliency s':>11s} {'ratio':>6s}")
    for name, spec, rho, batch in cases:
        p, s = case(spec, rho, batch, args.repeats)
        print(f"{name:42s} {p:10.4f} {s:11.4f} {s / p:6.2f}")


if __name__ == "__main__":
    main()
