"""Time ``cnas-ir report`` on the paper config (issue 6 target: under 30 s).

The run directory is made to look like a finished paper-scale search, without training:

- ``001-build.cnas``: the paper config's one-shot graph;
- ``002-prune.cnas``: the same pruned with the random criterion to rho = 0.46, with float32
  weights in every one-shot shape (random numbers: the report never looks at their values, but
  loading them is part of the work) and a history holding a 150-epoch training before pruning
  and a 1-epoch fine-tuning after every iteration but the last;
- ``metrics.jsonl``: what those commands log -- 150 training epochs, a fine-tuning epoch before
  every prune line but the last, then 630 epochs of retraining (the paper's final model).

Timed: the command as a user runs it (``python -m cnas_ir report RUN -o OUT``, a fresh
interpreter each time, imports included), and ``write_report`` in-process after a warm-up.

    python benchmarks/bench_report.py [--repeat 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import cnas_ir
from cnas_ir.app.report import write_report
from cnas_ir.ir import Graph
from cnas_ir.passes.prune import prune_to_rho, random_saliency
from cnas_ir.weights import weight_table


def _fake_finetune(g: Graph) -> Graph:
    """Stands in for one epoch of fine-tuning: only its history event matters to the report."""
    n = sum(1 for e in g.history if e.get("pass") == "prune")
    return g.with_event({"pass": "train", "epochs": 1, "data": "synthetic", "reinit": False, "seed": n,
                         "val_acc": round(0.95 - 0.004 * n, 6), "test_acc": round(0.94 - 0.004 * n, 6)})  # fmt: skip


def make_run(run: Path, rho: float) -> Graph:
    """Write the run directory described in the module docstring; returns the pruned graph."""
    run.mkdir(parents=True, exist_ok=True)
    one_shot = cnas_ir.build(Path(__file__).resolve().parent.parent / "examples" / "nasnet.yaml")
    cnas_ir.save(one_shot, run / "001-build.cnas")
    trained = one_shot.with_event({"pass": "train", "epochs": 150, "data": "synthetic", "reinit": False,
                                   "seed": 0, "val_acc": 0.955, "test_acc": 0.951})  # fmt: skip
    pruned = prune_to_rho(trained, rho, score=lambda g: random_saliency(g, 0), finetune=_fake_finetune,
                          criterion="random")  # fmt: skip
    rng = np.random.default_rng(0)
    weights = {name: rng.standard_normal(info.shape, dtype=np.float32) for name, info in weight_table(pruned).items()}
    pruned = pruned.replace(weights=weights)
    cnas_ir.save(pruned, run / "002-prune.cnas")

    lines = []
    for epoch in range(1, 151):
        acc = 0.95 * (1 - math.exp(-epoch / 25))
        lines.append({"cmd": "train", "epoch": epoch, "lr": 0.05 * (0.5 + 0.5 * math.cos(math.pi * (epoch % 10) / 10)),
                      "train_loss": 2.3 * math.exp(-epoch / 30), "train_acc": acc + 0.02, "val_loss":
                      2.3 * math.exp(-epoch / 35), "val_acc": acc, "seconds": 60.0 * epoch})  # fmt: skip
    prunes = [e for e in pruned.history if e.get("pass") == "prune"]
    for i, e in enumerate(prunes):
        if i + 1 < len(prunes):
            lines.append({"cmd": "train", "epoch": 1, "lr": 0.05, "train_loss": 0.2, "train_acc": 0.95,
                          "val_loss": 0.25, "val_acc": 0.95 - 0.004 * (i + 1), "seconds": 60.0})  # fmt: skip
        lines.append({"cmd": "prune", "iteration": e["iteration"], "removed": e["removed"], "x_live": e["x_live"],
                      "params_live": e["params_live"], "rho": e["rho"]})  # fmt: skip
    for epoch in range(1, 631):
        acc = 0.97 * (1 - math.exp(-epoch / 60))
        lines.append({"cmd": "train", "epoch": epoch, "lr": 0.05, "train_loss": 2.3 * math.exp(-epoch / 80),
                      "train_acc": acc + 0.02, "val_loss": 2.3 * math.exp(-epoch / 90), "val_acc": acc,
                      "seconds": 40.0 * epoch})  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return pruned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rho", type=float, default=0.46)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="Make the run directory here and keep it (with report.html).")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.keep if args.keep is not None else Path(tmp) / "run"
        t0 = time.perf_counter()
        pruned = make_run(run, args.rho)
        setup = time.perf_counter() - t0
        out = run / "report.html"
        cli = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "cnas_ir", "report", str(run), "-o", str(out)]
            subprocess.run(cmd, check=True, capture_output=True)
            cli.append(time.perf_counter() - t0)
        write_report(run, out)  # warm: imports, fonts, caches
        inproc = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            write_report(run, out)
            inproc.append(time.perf_counter() - t0)
        result = {
            "setup_s": round(setup, 2),
            "artifact_mb": round((run / "002-prune.cnas").stat().st_size / 2**20, 1),
            "rho": round(float(next(e["rho"] for e in reversed(pruned.history) if e.get("pass") == "prune")), 6),
            "report_kb": round(out.stat().st_size / 1024),
            "cli_s": [round(t, 2) for t in cli],
            "cli_median_s": round(statistics.median(cli), 2),
            "in_process_median_s": round(statistics.median(inproc), 2),
            "target_s": 30,
        }
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
