"""Taylor versus random pruning on the tiny digits example (issue 4, acceptance 3).

For each seed: train the one-shot model (the spec's recipe, that seed), then for each
criterion prune to rho with fine-tuning between iterations, fine-tune the result for the
spec's epochs (CNAS-W) and measure test accuracy. Prints one row per seed and the means.

    python benchmarks/criteria_digits.py [--seeds 0 1 2] [--rho 0.3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cnas_ir
from cnas_ir.backends.pytorch.data import load_dataset
from cnas_ir.backends.pytorch.search import SearchSettings, search
from cnas_ir.backends.pytorch.train import evaluate, train
from cnas_ir.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=ROOT / "examples" / "tiny.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rho", type=float, default=0.3)
    args = ap.parse_args()
    graph = cnas_ir.build(args.spec)
    data = load_dataset(graph.spec)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(tmp)
        for seed in args.seeds:
            t0 = time.perf_counter()
            one_shot = train(graph, data=data, device="cpu", run=run, progress=False, seed=seed)
            row = {"seed": seed, "one_shot": evaluate(one_shot, "test", data=data, device="cpu")["accuracy"]}
            for criterion in ("taylor", "random"):
                s = SearchSettings(rho=args.rho, criterion=criterion, seed=seed, device="cpu",
                                   saliency_batches=graph.spec.search.saliency_batches)  # fmt: skip
                pruned = search(one_shot, s, data=data, run=run)
                final = train(pruned, data=data, device="cpu", run=run, progress=False, seed=seed)
                row[criterion] = evaluate(final, "test", data=data, device="cpu")["accuracy"]
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            print(f"seed {seed}: one-shot {row['one_shot']:.2%}, taylor {row['taylor']:.2%}, "
                  f"random {row['random']:.2%} ({row['seconds']:.0f} s)", flush=True)  # fmt: skip
    for key in ("one_shot", "taylor", "random"):
        vals = [r[key] for r in rows]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        print(f"mean {key}: {statistics.mean(vals):.2%} (sd {sd:.2%})")


if __name__ == "__main__":
    main()
