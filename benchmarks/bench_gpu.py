"""Training throughput and peak memory of the paper's one-shot network: fp32 vs bf16 autocast,
contiguous vs channels-last (issue 7).

Each variant runs in a fresh process (so its peak memory is its own): the paper config
(``{"name": "paper"}``: NASNet, 36 channels, 20 cells, CIFAR-sized 3x32x32 inputs) is lowered
in compact mode and trained for a few SGD steps on random data with the trainer's optimizer;
the timed steps follow warm-up steps. Reported: images per second and the peak memory --
``torch.cuda.max_memory_allocated`` on a GPU, the process's peak resident set
(``ru_maxrss``, which includes Python and torch themselves) on CPU.

    python benchmarks/bench_gpu.py                                   # CUDA if present
    python benchmarks/bench_gpu.py --device cpu                      # the CPU smoke run

On CPU the defaults shrink to batch 2, no warm-up and 1 timed step (about two minutes on two
cores: bf16 autocast is emulated there, ~10x slower than fp32): the run checks that every
variant works; its numbers say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads on a shared box

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import cnas_ir  # noqa: E402
from cnas_ir.backends.pytorch import lower  # noqa: E402
from cnas_ir.backends.pytorch.train import autocast, pick_device, sgd  # noqa: E402
from cnas_ir.ir import Graph  # noqa: E402

VARIANTS = {
    "fp32": ("off", False),
    "fp32 channels-last": ("off", True),
    "bf16": ("bf16", False),
    "bf16 channels-last": ("bf16", True),
}


def one(
    variant: str, device: str, batch: int, warmup: int, steps: int, graph: Graph | None = None
) -> dict[str, object]:
    """Train ``graph`` (default: the paper's one-shot network) for ``warmup + steps`` steps of
    ``variant``; its measurements."""
    amp, channels_last = VARIANTS[variant]
    dev = pick_device(device)
    torch.manual_seed(0)
    g = cnas_ir.build({"name": "paper"}) if graph is None else graph
    s = g.spec
    module = lower(g, "compact").to(dev)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    opt = sgd(module.parameters(), s.train)
    x = torch.randn(batch, s.input.channels, s.input.size, s.input.size, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, s.classes, (batch,), device=dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(dev)

    def step() -> None:
        with autocast(dev, amp):
            loss = F.cross_entropy(module(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    module.train()
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - t0
    if dev.type == "cuda":
        peak, what = torch.cuda.max_memory_allocated(dev), "max_memory_allocated"
    else:
        peak, what = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
    return {
        "variant": variant,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "batch": batch,
        "steps": steps,
        "images_per_s": batch * steps / seconds,
        "peak_mib": peak / 2**20,
        "peak_of": what,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--batch", type=int, help="images per step [default: 128 on CUDA, 2 on CPU]")
    ap.add_argument("--warmup", type=int, help="untimed steps first [default: 5 on CUDA, 0 on CPU]")
    ap.add_argument("--steps", type=int, help="timed steps [default: 20 on CUDA, 1 on CPU]")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = ap.parse_args()
    cuda = pick_device(args.device).type == "cuda"
    batch = args.batch or (128 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 0)
    steps = args.steps or (20 if cuda else 1)
    if args.one:
        print(json.dumps(one(args.one, args.device, batch, warmup, steps)))
        return
    variants = [v.strip() for v in args.variants.split(",")]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}")
    print(f"paper one-shot network, device {args.device}, batch {batch}, {warmup} warm-up + {steps} timed steps")
    print(f"{'variant':20s} {'images/s':>10s} {'peak MiB':>10s}  peak of")
    for v in variants:
        cmd = [sys.executable, __file__, "--one", v, "--device", args.device, "--batch", str(batch),
               "--warmup", str(warmup), "--steps", str(steps)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{v:20s} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{v:20s} {r['images_per_s']:10.1f} {r['peak_mib']:10.0f}  {r['peak_of']} ({r['device']})")


if __name__ == "__main__":
    main()
