"""torch.compile on a compact module: compile time, and eager vs compiled speed (training and eval).

A spec pruned at random to ``--rho``, lowered compact, channels_last. Training step = zero_grad +
forward + cross-entropy + backward; eval = forward under ``torch.no_grad()``. Compiled modules take
the per-op path (``NasnetCell`` docs); eager ones the buffered (training) and fused (eval)
paths. Compile time is the first call's wall time; then ``--rounds`` interleaved rounds, medians::

    python benchmarks/bench_compile.py [--spec examples/tiny.yaml] [--rho 0.46] [--batch 64] [--rounds 5]

The paper config takes about 10 minutes to compile per mode on two cores; a reduced one
(``--channels 12``: the paper's 20 cells, narrower) shows the same trade-off in a few minutes.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import cnas_ir  # noqa: E402
from cnas_ir.backends.pytorch import lower  # noqa: E402
from cnas_ir.passes.fold import fold  # noqa: E402
from cnas_ir.passes.prune import prune_to_rho, random_saliency  # noqa: E402
from cnas_ir.spec import load_spec, parse_spec  # noqa: E402

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "examples" / "tiny.yaml"), help="a spec file, or 'paper'")
    ap.add_argument("--channels", type=int, help="override nasnet.channels")
    ap.add_argument("--rho", type=float, default=0.46)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = parse_spec({"name": "paper"}) if args.spec == "paper" else load_spec(args.spec)
    updates: dict[str, object] = {"spatial_dropout": 0.0}
    if args.channels is not None:
        updates["channels"] = args.channels
    assert spec.nasnet is not None, "a NASNet spec"
    spec = spec.model_copy(update={"nasnet": spec.nasnet.model_copy(update=updates)})
    g = cnas_ir.build(spec)
    pruned = fold(prune_to_rho(g, args.rho, score=lambda h: random_saliency(h, 0), criterion="random"))
    torch.manual_seed(0)
    base = lower(pruned, "compact", weights=False).to(memory_format=torch.channels_last)
    s = spec.input
    x = torch.randn(args.batch, s.channels, s.size, s.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, spec.classes, (args.batch,))
    print(f"torch {torch.__version__}, threads {args.threads}, spec {spec.name}, rho {args.rho}, batch {args.batch}")

    for mode in ("train", "eval"):
        eager = copy.deepcopy(base).train(mode == "train")
        compiled_module = copy.deepcopy(base).train(mode == "train")
        compiled = torch.compile(compiled_module)

        def call(m: Callable[[torch.Tensor], torch.Tensor], owner: torch.nn.Module, mode: str) -> Callable[[], object]:
            if mode == "eval":

                def infer() -> object:
                    with torch.no_grad():
                        return m(x)

                return infer

            def step() -> None:
                owner.zero_grad(set_to_none=True)
                F.cross_entropy(m(x), y).backward()

            return step

        fns = {"eager": call(eager, eager, mode), "compiled": call(compiled, compiled_module, mode)}
        first = _timed(fns["compiled"])
        fns["eager"]()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.rounds):
            for k, fn in fns.items():
                times[k].append(_timed(fn))
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        print(
            f"{mode}: compile (first call) {first:.1f} s; eager {med['eager']:.1f} ms, compiled "
            f"{med['compiled']:.1f} ms: {med['eager'] / med['compiled']:.2f}x"
        )


if __name__ == "__main__":
    main()
