"""Time build + stats + save + load of the paper config, and its peak memory.

Issue 2 target on the 2-core build machine: under 0.5 s and under 150 MB above the
interpreter. Memory is measured two ways: tracemalloc's peak (Python and numpy allocations)
and the growth of the process's peak RSS over its RSS after imports.

    python benchmarks/bench_core.py [--spec examples/nasnet.yaml] [--repeat 5]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import cnas_ir
from cnas_ir.passes.stats import compute_stats

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def once(spec: Path, out: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    graph = cnas_ir.build(spec)
    t1 = time.perf_counter()
    stats = compute_stats(graph)
    t2 = time.perf_counter()
    cnas_ir.save(graph, out)
    t3 = time.perf_counter()
    back = cnas_ir.load(out)
    t4 = time.perf_counter()
    assert compute_stats(back).total == stats.total
    return {"build": t1 - t0, "stats": t2 - t1, "save": t3 - t2, "load": t4 - t3, "total": t4 - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=ROOT / "examples" / "nasnet.yaml")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.cnas"
        base_rss = rss_mb()
        first = once(args.spec, out)  # cold: first use of every code path (lazy imports included)
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        runs = [once(args.spec, out) for _ in range(args.repeat)]
        tracemalloc.start()  # separately: tracemalloc slows allocation down
        once(args.spec, out)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        size = out.stat().st_size
    print(f"spec: {args.spec.name}; artifact {size / 1e6:.2f} MB")
    print(f"{'step':8s} {'cold s':>8s} {'median s':>9s}")
    for k in ("build", "stats", "save", "load", "total"):
        print(f"{k:8s} {first[k]:8.3f} {statistics.median(r[k] for r in runs):9.3f}")
    print(f"tracemalloc peak (one run): {peak / 2**20:.1f} MB")
    print(f"peak RSS growth over the interpreter after imports: {peak_rss - base_rss:.1f} MB")


if __name__ == "__main__":
    main()
