"""Issue 18: the parameter budget versus the multiply-add budget on the digits example, at the same rho.

For each seed: train the one-shot model of ``--spec`` (the spec's recipe and epochs, that seed);
then for each budget (``params``, ``macs``) search from it to ``--rho`` with the spec's
``search`` section (Taylor saliency, gamma, fine-tuning between iterations), train the result
from scratch for the spec's epochs (CNAS-R, the protocol of EXPERIMENTS.md) and measure test
accuracy. Reports per run and as means over the seeds: test accuracy, model parameters and
multiply-adds per image, rho (cell parameters) and rho_macs (cell multiply-adds), and the live x
per stack. The seeds run in ``--jobs`` worker processes, one intra-op thread each.

    python benchmarks/budget_digits.py [--seeds 0 1 2] [--rho 0.3] [--jobs 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

__all__ = ["main", "run_seed"]

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = ("params", "macs")


def run_seed(spec: Path, seed: int, rho: float) -> dict[str, Any]:
    """One seed: the one-shot model, then a search and a CNAS-R training per budget."""
    import torch

    import cnas_ir
    from cnas_ir.backends.pytorch.data import load_dataset
    from cnas_ir.backends.pytorch.search import SearchSettings, search
    from cnas_ir.backends.pytorch.train import evaluate, train
    from cnas_ir.passes.fold import fold
    from cnas_ir.passes.stats import compute_stats

    torch.set_num_threads(1)  # tiny networks: one thread is fastest, and the jobs share the cores
    t0 = time.perf_counter()
    graph = cnas_ir.build(spec)
    data = load_dataset(graph.spec)
    one_shot = train(graph, data=data, device="cpu", progress=False, seed=seed)
    row: dict[str, Any] = {"seed": seed, "one_shot": evaluate(one_shot, "test", data=data, device="cpu")["accuracy"]}
    s = graph.spec.search
    for budget in BUDGETS:
        settings = SearchSettings(rho=rho, budget=budget, gamma=s.gamma, criterion=s.criterion, seed=seed,
                                  finetune_epochs=s.finetune_epochs, saliency_batches=s.saliency_batches,
                                  device="cpu")  # fmt: skip
        pruned = search(one_shot, settings, data=data)
        final = train(pruned, data=data, device="cpu", progress=False, seed=seed, reinit=True)
        st = compute_stats(fold(final))
        widths = sorted({c.width for c in st.cells})
        row[budget] = {
            "accuracy": evaluate(final, "test", data=data, device="cpu")["accuracy"],
            "params": st.model_params_live,
            "macs": st.macs_live,
            "rho": st.rho,
            "rho_macs": st.rho_macs,
            "x_live_per_stack": [sum(c.x_live for c in st.cells if c.width == w) for w in widths],
        }
    row["seconds"] = time.perf_counter() - t0
    return row


def _line(row: dict[str, Any]) -> str:
    parts = [f"seed {row['seed']}: one-shot {row['one_shot']:.2%}"]
    for b in BUDGETS:
        r = row[b]
        parts.append(
            f"{b}: {r['accuracy']:.2%}, {r['params']:,} params, {r['macs']:,} MACs, rho {r['rho']:.4f}, "
            f"rho_macs {r['rho_macs']:.4f}, live x {' / '.join(map(str, r['x_live_per_stack']))}"
        )
    return "; ".join(parts) + f" ({row['seconds']:.0f} s)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=ROOT / "examples" / "tiny.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rho", type=float, default=0.3)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    if args.jobs <= 1:
        for seed in args.seeds:
            rows.append(run_seed(args.spec, seed, args.rho))
            print(_line(rows[-1]), flush=True)
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            for row in pool.map(run_seed, [args.spec] * len(args.seeds), args.seeds, [args.rho] * len(args.seeds)):
                rows.append(row)
                print(_line(row), flush=True)
    summary: dict[str, dict[str, float]] = {}
    print(f"\n{'budget':8s} {'test accuracy':>20s} {'params':>10s} {'MACs':>12s} {'rho':>8s} {'rho_macs':>8s}")
    for b in BUDGETS:
        acc = [r[b]["accuracy"] for r in rows]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        summary[b] = {
            k: statistics.mean(r[b][k] for r in rows) for k in ("accuracy", "params", "macs", "rho", "rho_macs")
        }
        summary[b]["accuracy_sd"] = sd
        m = summary[b]
        print(f"{b:8s} {m['accuracy']:>11.2%} ± {sd:.2%} {m['params']:>10,.0f} {m['macs']:>12,.0f} "
              f"{m['rho']:>8.4f} {m['rho_macs']:>8.4f}")  # fmt: skip
    seconds = time.perf_counter() - t0
    print(f"\ntotal {seconds:.0f} s with {args.jobs} job(s)")
    if args.json:
        spec = args.spec.resolve()
        shown = spec.relative_to(ROOT) if spec.is_relative_to(ROOT) else spec  # no machine paths in results
        doc = {"spec": str(shown), "rho": args.rho, "seeds": args.seeds, "jobs": args.jobs, "seconds": seconds,
               "runs": rows, "summary": summary}  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
