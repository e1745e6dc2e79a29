"""The CUDA lowering on a GPU, in one run: equivalence, inference latency, training throughput.

What the build machines (CPU only) cannot check, measured on a lent GPU in one call:

1. **Equivalence on CUDA**: the paper config pruned at random to rho 0.46 (as in
   bench_speed.py), batch 8. Reference: the masked module in float64 on the CPU. Compared by
   ``|out - ref| / |ref|``: the compact module's fused inference path and its per-op path, the
   masked module, each in fp32 (TF32 off, then cuDNN's default TF32 on) and channels-first /
   channels_last, bf16 autocast, and the ONNX export run by onnxruntime with the best provider
   it has (CUDA when onnxruntime-gpu can use it).
2. **Inference latency**: one-shot, compact and the uniformly narrower peer (bench_speed.py's
   ``group_pruned_peer`` at the compact network's parameter count), eval under
   ``torch.inference_mode``, batch 1 / 32 / 256, fp32 and bf16 autocast, channels-first and
   channels_last; CUDA-event medians. Batch 1 is launch-bound, so it is also timed as a CUDA
   graph replay. Reported against the multiply-add ideal, as on the CPU.
3. **Training throughput** of the compact (pruned) network, fp32 vs bf16 autocast, channels_last,
   with the trainer's optimizer (images/s and ``max_memory_allocated``). The one-shot network's
   is bench_gpu.py's.

    python benchmarks/bench_cuda.py [--device cuda] [--json out.json]
    python benchmarks/bench_cuda.py --device cpu --config tiny-random-0.46 --batches 1 4 --reps 2
        # the CPU smoke run: checks that the script works; its numbers say nothing about a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gpu  # noqa: E402
from bench_gpu import VARIANTS  # noqa: E402
from bench_speed import flop_macs, group_pruned_peer, make_config  # noqa: E402

from cnas_ir.backends.pytorch import CudaGraphReplay, lower  # noqa: E402
from cnas_ir.backends.pytorch.train import autocast  # noqa: E402


def rel(out: Tensor, ref: Tensor) -> float:
    out64 = out.detach().to("cpu", torch.float64)
    return float((out64 - ref).norm() / ref.norm())


def layout(m: nn.Module, x: Tensor, cl: bool) -> tuple[nn.Module, Tensor]:
    if not cl:
        return m, x
    return m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)


def equivalence(cfg, dev: torch.device) -> list[tuple[str, float]]:  # noqa: ANN001
    s = cfg.pruned.spec
    torch.manual_seed(1)
    x = torch.randn(8, s.input.channels, s.input.size, s.input.size)
    ref_m = lower(cfg.pruned, "masked").double().eval()
    with torch.no_grad():
        ref = ref_m(x.double())
    rows: list[tuple[str, float]] = []
    xd = x.to(dev)
    tf32_default = torch.backends.cudnn.allow_tf32
    for tf32 in (False, True):
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        tag = "fp32, TF32 on" if tf32 else "fp32"
        for mode in ("compact", "masked"):
            for cl in (False, True):
                m, xi = layout(lower(cfg.pruned, mode).to(dev).eval(), xd, cl)
                lay = "channels_last" if cl else "channels-first"
                with torch.inference_mode():
                    path = "fused path" if mode == "compact" else "per-op"
                    rows.append((f"{mode} {path}, {tag}, {lay}", rel(m(xi), ref)))
                if mode == "compact":  # grad enabled: the per-op path
                    with torch.enable_grad():
                        rows.append((f"compact per-op path, {tag}, {lay}", rel(m(xi), ref)))
    torch.backends.cudnn.allow_tf32 = tf32_default
    torch.backends.cuda.matmul.allow_tf32 = tf32_default
    m = lower(cfg.pruned, "compact").to(dev).eval()
    if dev.type == "cuda":
        with torch.inference_mode(), autocast(dev, "bf16"):
            rows.append(("compact fused path, bf16 autocast", rel(m(xd), ref)))
    rows.append(ort_row(cfg, x, ref))
    return rows


def ort_row(cfg, x: Tensor, ref: Tensor) -> tuple[str, float]:  # noqa: ANN001
    import onnxruntime as ort

    from cnas_ir.backends.onnx import export

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export(cfg.pruned, path)
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        sess = ort.InferenceSession(str(path), providers=providers)
        out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        return (f"onnxruntime {ort.__version__}, {sess.get_providers()[0]}", rel(torch.from_numpy(out), ref))


def cuda_time(fn: Callable[[], object], dev: torch.device, reps: int) -> float:
    """Median seconds of ``fn`` over ``reps`` runs after 3 warm-ups (CUDA events on a GPU)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def graph_replay(m: nn.Module, x: Tensor) -> Callable[[], object]:
    """``m(x)`` replayed from a CUDA graph (the backend's :class:`CudaGraphReplay`, captured
    here): each call copies ``x`` in, replays and copies the output out, as ``cnas-ir eval
    --cuda-graph`` does."""
    replay = CudaGraphReplay(m)
    replay(x)
    return lambda: replay(x)


def latency(cfg, dev: torch.device, batches: list[int], reps: int) -> list[dict[str, object]]:  # noqa: ANN001
    s = cfg.pruned.spec
    peer, _ = group_pruned_peer(cfg.one_shot, cfg.params_live)
    peer_macs = flop_macs(peer, s.input.channels, s.input.size)
    models = {
        "one-shot": (lower(cfg.one_shot, "compact").to(dev).eval(), cfg.macs),
        "compact": (lower(cfg.pruned, "compact").to(dev).eval(), cfg.macs_live),
        "peer": (peer.to(dev).eval(), peer_macs),
    }
    rows = []
    for batch in batches:
        x = torch.randn(batch, s.input.channels, s.input.size, s.input.size, device=dev)
        for amp in ("off", "bf16") if dev.type == "cuda" else ("off",):
            for name, (m, macs) in models.items():
                for cl in (False, True):
                    mi, xi = layout(m, x, cl)

                    def run(mi: nn.Module = mi, xi: Tensor = xi, amp: str = amp) -> object:
                        with torch.inference_mode(), autocast(dev, amp):
                            return mi(xi)

                    t = cuda_time(run, dev, reps)
                    rows.append(row(name, batch, amp, cl, "eager", t, macs))
                    if dev.type == "cuda" and batch == 1 and amp == "off":
                        try:
                            t = cuda_time(graph_replay(mi, xi), dev, reps)
                            rows.append(row(name, batch, amp, cl, "cuda graph", t, macs))
                        except Exception as e:  # report, do not stop the run
                            print(f"cuda graph of {name} failed: {type(e).__name__}: {e}")
        m = None
    return rows


def row(name: str, batch: int, amp: str, cl: bool, how: str, t: float, macs: int) -> dict[str, object]:
    """One measurement, printed as it is taken (a run stopped at its time limit keeps its lines)."""
    r = {"model": name, "batch": batch, "amp": amp, "channels_last": cl, "how": how, "ms": t * 1e3, "macs": macs}
    rate = batch * macs / t / 1e9
    lay = "cl" if cl else "cf"
    print(f"{name:9s} {batch:5d} {amp:>4s} {lay:>6s} {how:>10s} {t * 1e3:9.3f} {rate:8.0f}", flush=True)
    return r


def training(cfg, dev: torch.device, batch: int, steps: int) -> list[dict[str, object]]:  # noqa: ANN001
    """The compact network's training throughput: bench_gpu.py's step, on the pruned graph."""
    variants = ("fp32 channels-last", "bf16 channels-last") if dev.type == "cuda" else ("fp32 channels-last",)
    out = []
    for variant in variants:
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        r = bench_gpu.one(variant, dev.type, batch, warmup=3, steps=steps, graph=cfg.pruned)
        out.append({"amp": VARIANTS[variant][0], "batch": batch, "images_per_s": r["images_per_s"],
                    "peak_mib": r["peak_mib"] if dev.type == "cuda" else float("nan")})  # fmt: skip
    return out


def latency_part(cfg, dev: torch.device, args: argparse.Namespace, ideal: float) -> list[dict[str, object]]:  # noqa: ANN001
    print("\n== inference latency (medians, ms) ==")
    print(f"{'model':9s} {'batch':>5s} {'amp':>4s} {'layout':>6s} {'how':>10s} {'ms':>9s} {'GMAC/s':>8s}")
    lat = latency(cfg, dev, args.batches, args.reps)
    print("\nbest vs best (each model's fastest layout and way), speedup of compact over one-shot:")
    for batch in args.batches:
        for amp in sorted({r["amp"] for r in lat}):
            best = {}
            for name in ("one-shot", "compact", "peer"):
                cand = [r for r in lat if r["model"] == name and r["batch"] == batch and r["amp"] == amp]
                best[name] = min(cand, key=lambda r: r["ms"])
            sp = best["one-shot"]["ms"] / best["compact"]["ms"]
            per = (best["compact"]["ms"] / best["compact"]["macs"]) / (best["peer"]["ms"] / best["peer"]["macs"])
            print(f"  batch {batch:3d} {amp:4s}: {sp:.2f}x ({sp / ideal:.0%} of ideal); compact/peer per MAC {per:.2f}"
                  f"  [one-shot {best['one-shot']['ms']:.2f} ms, compact {best['compact']['ms']:.2f} ms,"
                  f" peer {best['peer']['ms']:.2f} ms]")  # fmt: skip
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--config", default="paper-random-0.46", help="a bench_speed.py configuration")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    ap.add_argument("--reps", type=int, default=20, help="timed runs per measurement (median)")
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--parts", default="equivalence,latency,training", help="comma-separated parts to run")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN autotune every conv shape")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    if dev.type == "cuda":
        # Off by default: the compact network has hundreds of distinct conv shapes, each
        # autotuned once per layout, dtype and batch -- minutes of a short lease.
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
        print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    t0 = time.perf_counter()
    cfg = make_config(args.config, 0)
    ideal = cfg.macs / cfg.macs_live
    print(f"{args.config}: {cfg.params_live:,} of {cfg.params:,} parameters, {cfg.macs_live / 1e6:.1f} M of "
          f"{cfg.macs / 1e6:.1f} M multiply-adds per image, ideal speedup {ideal:.2f}x "
          f"({time.perf_counter() - t0:.1f} s to prepare)", flush=True)  # fmt: skip

    result: dict[str, object] = {"config": args.config, "ideal": ideal, "device": str(dev)}
    parts = set(args.parts.split(","))
    if "equivalence" in parts:
        print("\n== equivalence: |out - ref| / |ref|, ref = masked in float64 on the CPU ==")
        eq = equivalence(cfg, dev)
        for name, err in eq:
            print(f"{name:55s} {err:.2e}", flush=True)
        result["equivalence"] = eq
    if "latency" in parts:
        result["latency"] = latency_part(cfg, dev, args, ideal)
    if "training" in parts:
        print(f"\n== training throughput, compact network, batch {args.train_batch}, channels_last ==")
        tr = training(cfg, dev, args.train_batch, max(args.reps // 2, 2))
        result["training"] = tr
        for r in tr:
            print(f"  {r['amp']:4s}: {r['images_per_s']:9.1f} images/s, peak {r['peak_mib']:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
