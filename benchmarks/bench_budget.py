"""Issue 18: what the budget (``prune --budget params|macs``) does to parameters, multiply-adds and
measured latency, on the paper config at the same rho.

The paper config with spatial dropout off (``cnas_ir.build({"name": "p", "nasnet":
{"spatial_dropout": 0.0}})``, as bench_perf.py) is pruned at random (``random_saliency``, the
same seeds for both budgets, one per iteration) to ``--rho`` (0.46) with each budget, then
folded. Per network: cell and model parameters, cell and model multiply-adds per image
(``compute_stats``), ``rho`` (cell parameters) and ``rho_macs`` (cell multiply-adds), and
latency:

- ``infer1``, ``infer32``: PyTorch eager, an eval-mode forward under ``torch.inference_mode()``
  at batch 1 and 32, each network in its faster layout (NCHW or channels_last: one warm-up and
  two timed calls each, solo);
- ``ort1``, ``ort32``: onnxruntime (CPU provider) on ``cnas_ir.backends.onnx.export`` of the
  network (channel multiple 16), ``intra_op`` threads as torch.

Then ``--rounds`` interleaved rounds per measure (every network once per round: one-shot,
params, macs; ``--ort-rounds-b1`` at onnxruntime batch 1), the median per network. The one-shot
network is the reference the ratios are taken against. Weights are the lowering's seeded
initialisation with BN statistics from one train-mode forward (bench_speed.calibrated).
``--criterion taylor-shaped`` ranks by bench_speed.taylor_shaped_saliency instead (random scores
shaped like the paper's Table 1: late cells keep their d -> x, reduction cells keep more), a
ranking that is not uniform across the stacks.
``OMP_WAIT_POLICY`` defaults to PASSIVE and ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` to 16384 (see
bench_speed.py). About 4 minutes on the 2-core build machine::

    python benchmarks/bench_budget.py [--rho 0.46] [--rounds 7] [--ort-rounds-b1 15] [--threads 2]
        [--seed 0] [--criterion random|taylor-shaped] [--measures infer1 infer32 ort1 ort32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")  # room for every model's conv primitives

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_perf import PAPER_SPEC, Variant, choose, torch_variants  # noqa: E402
from bench_speed import calibrated, ort_session, race, taylor_shaped_saliency  # noqa: E402

import cnas_ir  # noqa: E402
from cnas_ir.backends.onnx import export  # noqa: E402
from cnas_ir.backends.pytorch import lower  # noqa: E402
from cnas_ir.ir import Graph  # noqa: E402
from cnas_ir.passes.fold import fold  # noqa: E402
from cnas_ir.passes.prune import BUDGETS, prune_to_rho, random_saliency  # noqa: E402
from cnas_ir.passes.stats import Stats, compute_stats  # noqa: E402

__all__ = ["main", "prune_with"]

NETWORKS = ("oneshot", *BUDGETS)
MEASURES = ("infer1", "infer32", "ort1", "ort32")
CRITERIA = {"random": random_saliency, "taylor-shaped": taylor_shaped_saliency}


def prune_with(g: Graph, budget: str, rho: float, seed: int, criterion: str = "random") -> Graph:
    """``g`` pruned to ``rho`` in ``budget`` with a ``CRITERIA`` ranking, folded; iteration i
    scores with seed ``seed*1000 + i``, so both budgets see the same scores."""
    calls = iter(range(seed * 1000, seed * 1000 + 1000))
    saliency = CRITERIA[criterion]
    return fold(prune_to_rho(g, rho, score=lambda h: saliency(h, next(calls)), criterion=criterion,
                             budget=budget))  # fmt: skip


def _row(s: Stats) -> dict[str, Any]:
    return {
        "cell_params": s.total.params_live,
        "model_params": s.model_params_live,
        "cell_macs": s.total.macs_live,
        "model_macs": s.macs_live,
        "rho": s.rho,
        "rho_macs": s.rho_macs,
        "x_live": s.total.x_live,
        "x_live_per_stack": _per_stack(s),
    }


def _per_stack(s: Stats) -> list[int]:
    """Live x per stack (cells grouped by width): where each budget spends what it keeps."""
    widths = sorted({c.width for c in s.cells})
    return [sum(c.x_live for c in s.cells if c.width == w) for w in widths]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rho", type=float, default=0.46)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--ort-rounds-b1", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--criterion", choices=sorted(CRITERIA), default="random")
    ap.add_argument("--measures", nargs="+", choices=MEASURES, default=list(MEASURES))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
        f"ONEDNN_PRIMITIVE_CACHE_CAPACITY={os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY']}, "
        f"paper config, {args.criterion} saliency, rho {args.rho}, rounds {args.rounds}",
        flush=True,
    )
    t0 = time.perf_counter()
    one_shot = cnas_ir.build(PAPER_SPEC)
    graphs = {"oneshot": one_shot} | {b: prune_with(one_shot, b, args.rho, args.seed, args.criterion) for b in BUDGETS}
    rows = {name: _row(compute_stats(g)) for name, g in graphs.items()}
    print(f"\n{'network':8s} {'cell params':>12s} {'model params':>13s} {'cell MACs':>14s} {'model MACs':>14s} "
          f"{'rho':>8s} {'rho_macs':>8s}  live x per stack")  # fmt: skip
    for name, r in rows.items():
        print(f"{name:8s} {r['cell_params']:>12,} {r['model_params']:>13,} {r['cell_macs']:>14,} "
              f"{r['model_macs']:>14,} {r['rho']:>8.4f} {r['rho_macs']:>8.4f}  "
              f"{' / '.join(f'{n:,}' for n in r['x_live_per_stack'])}", flush=True)  # fmt: skip

    graphs = {name: calibrated(g, args.seed) for name, g in graphs.items()}
    spec = one_shot.spec
    gen = torch.Generator().manual_seed(args.seed)
    x32 = torch.randn(32, spec.input.channels, spec.input.size, spec.input.size, generator=gen)
    inputs = {"infer1": x32[:1].clone(), "infer32": x32, "ort1": x32[:1].clone(), "ort32": x32}
    results: dict[str, dict[str, float]] = {}
    layouts: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sessions: dict[str, Any] = {}
        if any(m.startswith("ort") for m in args.measures):
            for name, g in graphs.items():
                path = Path(tmp) / f"{name}.onnx"
                export(g, path, allow_untrained=True)
                sessions[name] = ort_session(path, args.threads)
        models = {name: lower(g, "compact").eval() for name, g in graphs.items()}
        for measure in args.measures:
            t_m = time.perf_counter()
            x = inputs[measure]
            if measure.startswith("ort"):
                xn = x.numpy()
                chosen = {
                    n: Variant("cm16", lambda s=s, xn=xn: s.run(None, {"input": xn}), s) for n, s in sessions.items()
                }
            else:
                chosen = {n: choose(torch_variants(measure, m, x, x))[0] for n, m in models.items()}
            rounds = args.ort_rounds_b1 if measure == "ort1" else args.rounds
            med = race({n: v.fn for n, v in chosen.items()}, rounds)
            results[measure] = {n: 1e3 * t for n, t in med.items()}
            layouts[measure] = {n: v.label for n, v in chosen.items()}
            del chosen
            print(f"{measure}: " + ", ".join(f"{n} {t:.1f} ms ({layouts[measure][n]})"
                                             for n, t in results[measure].items())
                  + f" [{rounds} rounds, {time.perf_counter() - t_m:.0f} s]", flush=True)  # fmt: skip
        sessions.clear()

    print(f"\n{'median ms':10s} " + " ".join(f"{n:>10s}" for n in NETWORKS) + "   macs / params")
    for measure, med in results.items():
        print(
            f"{measure:10s} " + " ".join(f"{med[n]:>10.1f}" for n in NETWORKS) + f"   {med['macs'] / med['params']:.3f}"
        )
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json:
        doc = {
            "torch": torch.__version__,
            "threads": args.threads,
            "env": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")},
            "rho": args.rho,
            "seed": args.seed,
            "criterion": args.criterion,
            "rounds": args.rounds,
            "ort_rounds_b1": args.ort_rounds_b1,
            "networks": rows,
            "median_ms": results,
            "layouts": layouts,
        }
        args.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
