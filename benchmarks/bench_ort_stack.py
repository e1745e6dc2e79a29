"""Before/after of stacking sibling convs in the ONNX export (``stack_sibling_convs``), in one
process: a bench_speed.py configuration (default: the paper config pruned at random to rho
0.46) and its one-shot network, each exported with and without the rewrite, timed by
onnxruntime (CPU provider, 2 threads, no spinning) in interleaved rounds (medians); the
outputs of the two exports must agree::

    python benchmarks/bench_ort_stack.py [--config paper-random-0.46] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import CONFIGS, make_config, ort_session  # noqa: E402

import cnas_ir.backends.onnx.emit as emit  # noqa: E402
from cnas_ir.backends.onnx import export  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="paper-random-0.46", choices=CONFIGS)
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds at batch 32 (batch 1: 6x as many)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    cfg = make_config(args.config, 0)
    ideal = cfg.macs / cfg.macs_live
    stack = emit.stack_sibling_convs
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, graph in (("one-shot", cfg.one_shot), ("compact", cfg.pruned)):
            files = []
            for version in ("before", "after"):
                emit.stack_sibling_convs = stack if version == "after" else (lambda model: 0)
                path = Path(tmp) / f"{name}-{version}.onnx"
                export(graph, path, channel_multiple=16)
                files.append(path.read_bytes())
                sessions[name, version] = ort_session(path, args.threads)
            if files[0] == files[1]:  # nothing stacked: one session, timed once per round
                print(f"{name}: the export is the same before and after")
                del sessions[name, "after"]
        emit.stack_sibling_convs = stack
    size, channels = cfg.pruned.spec.input.size, cfg.pruned.spec.input.channels
    print(f"{args.config}: ideal speedup {ideal:.2f}x; onnxruntime, {args.threads} threads")
    for batch, rounds in ((1, 6 * args.rounds), (32, args.rounds)):
        x = torch.randn(batch, channels, size, size).numpy()
        outs = {k: s.run(None, {"input": x})[0] for k, s in sessions.items()}
        for name in ("one-shot", "compact"):
            diff = float(np.abs(outs[name, "before"] - outs.get((name, "after"), outs[name, "before"])).max())
            assert diff < 1e-4, f"{name}: outputs differ by {diff}"
        times: dict[tuple[str, str], list[float]] = {k: [] for k in sessions}
        for _ in range(rounds):
            for k, s in sessions.items():
                t = time.perf_counter()
                s.run(None, {"input": x})
                times[k].append(time.perf_counter() - t)
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        print(f"batch {batch:2d}: " + ", ".join(f"{n} {v} {t:.1f} ms" for (n, v), t in med.items()))
        for version in ("before", "after"):
            sp = med.get(("one-shot", version), med["one-shot", "before"]) / med["compact", version]
            print(f"   {version}: compact speedup {sp:.2f}x = {100 * sp / ideal:.0f}% of the ideal")


if __name__ == "__main__":
    main()
