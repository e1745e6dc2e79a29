"""Before/after of two overheads of the fused inference path (issue 9), in one process.

1. **Gather on a channels_last buffer.** Before: ``index_select`` on the (N*H*W, C) view; after:
   ``gather`` with the index broadcast over the rows (``fused.gather_rows``). Whole forward of the
   compact network, batch 32, channels_last, interleaved rounds, medians; the outputs must be
   identical.
2. **Staleness check of the folded weights.** Before: walk ``cell.modules()`` and key every
   parameter and buffer of every op, each forward; after: ``FusedCell._folded`` with its
   cached (dict, name) sources. Milliseconds per forward of the whole network (all cells), and a
   batch-1 forward for scale.

Config: the paper spec pruned at random to rho 0.46 (``bench_speed.make_config``)::

    python benchmarks/bench_fused.py [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import make_config  # noqa: E402

L = importlib.import_module("cnas_ir.backends.pytorch.lower")
FUSED = importlib.import_module("cnas_ir.backends.pytorch.fused")
NASNET = importlib.import_module("cnas_ir.backends.pytorch.nasnet")


def index_select_rows(buf: Tensor, index: Tensor | tuple[int, int]) -> Tensor:
    """``fused.gather_rows`` as it was: index_select on the channels_last (N*H*W, C) view."""
    if isinstance(index, tuple):
        return buf[:, index[0] : index[1]]
    n, c, h, w = buf.shape
    if n * h * w > 1 and buf.is_contiguous(memory_format=torch.channels_last) and not buf.is_contiguous():
        flat = buf.permute(0, 2, 3, 1).reshape(n * h * w, c).index_select(1, index)
        return flat.view(n, h, w, -1).permute(0, 3, 1, 2)
    return buf.index_select(1, index)


def walk_key(cell: torch.nn.Module) -> tuple[object, ...]:
    """The staleness key as it was computed: a walk over the cell's op modules every call."""
    tensors = [t for m in cell.modules() if isinstance(m, NASNET.SepConv) for t in (*m.parameters(), *m.buffers())]
    return tuple((t.data_ptr(), t._version) for t in tensors)


def median_ms(fn, rounds: int) -> float:  # noqa: ANN001
    fn()
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = make_config("paper-random-0.46", 0)
    m = L.lower(cfg.pruned, "compact").eval().to(memory_format=torch.channels_last)
    x = torch.randn(32, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    current = FUSED.gather_rows

    def forward(gather) -> Tensor:  # noqa: ANN001
        FUSED.gather_rows = gather
        try:
            with torch.no_grad():
                return m(x)
        finally:
            FUSED.gather_rows = current

    same = torch.equal(forward(index_select_rows), forward(current))
    times: dict[str, list[float]] = {"index_select": [], "gather": []}
    for _ in range(args.rounds):
        for name, fn in (("index_select", index_select_rows), ("gather", current)):
            t = time.perf_counter()
            forward(fn)
            times[name].append(time.perf_counter() - t)
    before, after = (statistics.median(times[k]) * 1e3 for k in ("index_select", "gather"))
    print(f"torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds; paper config, rho 0.46")
    print(f"1. batch 32 channels_last forward: index_select {before:.0f} ms, gather {after:.0f} ms "
          f"({after / before:.2f}x); identical output: {same}")  # fmt: skip

    cells = [c for c in m.modules() if isinstance(c, NASNET.NasnetCell)]
    walk = median_ms(lambda: [walk_key(c) for c in cells], args.rounds * 3)
    cached = median_ms(lambda: [c._fused._folded(c) for c in cells], args.rounds * 3)
    x1 = torch.randn(1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        b1 = median_ms(lambda: m(x1), args.rounds * 3)
    print(f"2. staleness check per forward ({len(cells)} cells): walk {walk:.1f} ms, cached sources "
          f"{cached:.1f} ms; a batch-1 forward takes {b1:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
