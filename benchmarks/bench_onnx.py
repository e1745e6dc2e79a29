"""ONNX export of the paper config: export time, and inference latency against PyTorch eager.

The paper config (20 cells, C = 36/72/144) is pruned to rho = 0.46 with the random criterion
and given the PyTorch lowering's seeded initialisation (latency does not depend on training).
Timed, interleaved round by round so that load on the machine hits every contender alike:

- ``ort``: onnxruntime (CPU provider, ``intra_op_num_threads`` = --threads, no spin-waiting)
  on the exported compact model;
- ``torch``: PyTorch eager on ``lower(graph, "compact").eval()`` under ``torch.inference_mode``
  with ``torch.set_num_threads(--threads)``;
- ``torch1``: the same with one thread, timed after the interleaved rounds (switching PyTorch's
  thread count call by call is itself pathologically slow);
- ``ort-oneshot``: onnxruntime on the export of the unpruned (one-shot) graph.

Reports medians per batch size, the ratio ort / torch, and the time of ``export`` (with and
without ``check=True``). Issue targets: export under 20 s; ort at most 0.5x torch at batch 1.

Neither runtime may spin-wait: onnxruntime's idle workers are told not to, and OpenMP (PyTorch's
thread pool) gets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it. On a 2-core
machine where anything else runs, two spinning OpenMP threads wait on each other at every
barrier: a batch-1 forward measured 0.2-15 s, erratically, instead of 0.3 s.

    python benchmarks/bench_onnx.py [--rho 0.46] [--batches 1 32] [--rounds 11] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cnas_ir.backends.onnx import export, initial_weights
from cnas_ir.ir import Graph
from cnas_ir.passes.build import build_graph
from cnas_ir.passes.fold import fold
from cnas_ir.passes.prune import prune_to_rho, random_saliency
from cnas_ir.passes.stats import compute_stats
from cnas_ir.spec import parse_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rho", type=float, default=0.46)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--rounds", type=int, default=11, help="timed rounds at batch 1 (fewer at larger batches)")
    ap.add_argument("--no-torch1", action="store_true", help="skip the one-thread PyTorch baseline")
    ap.add_argument("--channel-multiple", type=int, default=16, help="export option (1: no channel padding)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    # Before torch is imported (its OpenMP runtime reads this once): see the module docstring.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_speed import ort_session, timed  # the one session setup (no spin-waiting) and timer

    from cnas_ir.backends.pytorch import lower

    print(f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, onnxruntime {ort.__version__}, torch {torch.__version__}")

    spec = parse_spec({"name": "paper"})
    one_shot = build_graph(spec)
    pruned: Graph = fold(
        prune_to_rho(one_shot, args.rho, score=lambda g: random_saliency(g, args.seed), criterion="random")
    )
    stats = compute_stats(pruned)
    print(
        f"paper config pruned to rho {stats.rho:.4f}: {stats.model_params_live:,} params, "
        f"{stats.macs_live / 1e6:.0f} M multiply-adds per image (one-shot {stats.macs / 1e6:.0f} M)"
    )
    pruned = initial_weights(pruned, args.seed)
    one_shot = initial_weights(one_shot, args.seed)

    results: dict[str, object] = {"rho": stats.rho, "threads": args.threads, "channel_multiple": args.channel_multiple}
    with tempfile.TemporaryDirectory() as tmp:
        path, path_full = Path(tmp) / "pruned.onnx", Path(tmp) / "one_shot.onnx"
        cm = args.channel_multiple
        t_export = timed(lambda: export(pruned, path, channel_multiple=cm))
        torch.set_num_threads(args.threads)
        t_check = timed(lambda: export(pruned, path, check=True, channel_multiple=cm))
        t_export_full = timed(lambda: export(one_shot, path_full, channel_multiple=cm))
        print(
            f"export: {t_export:.2f} s (with --check: {t_check:.2f} s); one-shot export {t_export_full:.2f} s "
            f"[target < 20 s]"
        )
        results |= {"export_s": t_export, "export_check_s": t_check, "export_one_shot_s": t_export_full}

        sess, sess_full = ort_session(path, args.threads), ort_session(path_full, args.threads)
        module = lower(pruned, "compact").eval()

        def torch_run(x: torch.Tensor, threads: int) -> None:
            torch.set_num_threads(threads)
            with torch.inference_mode():
                module(x)

        rows = []
        for batch in args.batches:
            x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32), dtype=np.float32)
            xt = torch.from_numpy(x)
            contenders: dict[str, Callable[[], object]] = {
                "ort": lambda x=x: sess.run(None, {"input": x}),
                "torch": lambda xt=xt: torch_run(xt, args.threads),
                "ort-oneshot": lambda x=x: sess_full.run(None, {"input": x}),
            }
            for fn in contenders.values():  # warm-up: allocations, ORT arenas, oneDNN primitives
                fn()
            rounds = max(3, args.rounds if batch == 1 else args.rounds // 2)
            times: dict[str, list[float]] = {k: [] for k in contenders}
            for _ in range(rounds):
                for name, fn in contenders.items():
                    times[name].append(timed(fn))
            if not args.no_torch1 and args.threads != 1:
                # Not interleaved: switching PyTorch's thread count call by call costs far more
                # than the call (measured here: 15 s instead of 0.2 s for the next call).
                torch_run(xt, 1)
                times["torch1"] = [timed(lambda xt=xt: torch_run(xt, 1)) for _ in range(rounds)]
                torch.set_num_threads(args.threads)
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {"batch": batch, "rounds": rounds} | {f"{k}_ms": 1e3 * v for k, v in med.items()}
            row["ort_over_torch"] = med["ort"] / med["torch"]
            if "torch1" in med:
                row["ort_over_torch1"] = med["ort"] / med["torch1"]
            row["ort_over_oneshot"] = med["ort"] / med["ort-oneshot"]
            rows.append(row)
            line = "  ".join(f"{k} {1e3 * v:8.1f} ms" for k, v in med.items())
            print(
                f"batch {batch:3d} ({rounds} rounds, medians): {line}   ort/torch {row['ort_over_torch']:.3f}"
                + (f"  ort/torch1 {row['ort_over_torch1']:.3f}" if "torch1" in med else "")
                + f"  ort/one-shot {row['ort_over_oneshot']:.3f}"
            )
        results["latency"] = rows
    torch.set_num_threads(args.threads)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
