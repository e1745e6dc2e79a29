"""Before/after of a change to the ONNX export, in onnxruntime: the exporter at a git revision
against the working tree's.

The revision is checked out in a temporary git worktree and installed there (``pip install
--no-deps --target``); a subprocess running that install exports the one-shot and the pruned
network of a bench_speed.py configuration (default: the paper config pruned at random to rho
0.46), and this process exports the same two with the working tree. All four models run in
onnxruntime (CPU provider, 2 threads, no spinning) in interleaved rounds (medians); the two
exports of each network must agree. Prints each model's time and the compact network's speedup
over the one-shot as a share of the multiply-add ideal, before and after::

    python benchmarks/bench_ort_ab.py REV [--config paper-random-0.46] [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import CONFIGS, ROOT, make_config, ort_session, race  # noqa: E402

_EXPORT = """
import sys
sys.path.insert(0, {bench!r})
from pathlib import Path
from bench_speed import make_config
from cnas_ir.backends.onnx import export
cfg = make_config({config!r}, 0)
for name, graph in (("one-shot", cfg.one_shot), ("compact", cfg.pruned)):
    export(graph, Path({out!r}) / f"{{name}}.onnx", channel_multiple=16)
"""


def export_at(rev: str, config: str, out: Path, tmp: Path) -> None:
    """Export ``config``'s two networks into ``out`` with the exporter at git revision ``rev``."""
    tree, site = tmp / "tree", tmp / "site"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site),
             str(tree)],
            check=True,
        )  # fmt: skip
        code = _EXPORT.format(bench=str(Path(__file__).resolve().parent), config=config, out=str(out))
        env = dict(os.environ, PYTHONPATH=str(site))
        subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", help="git revision of the 'before' exporter")
    ap.add_argument("--config", default="paper-random-0.46", choices=CONFIGS)
    ap.add_argument("--rounds", type=int, default=9, help="timed rounds at batch 32 (batch 1: 6x as many)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from cnas_ir.backends.onnx import export

    cfg = make_config(args.config, 0)
    ideal = cfg.macs / cfg.macs_live
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        dirs = {"before": tmp / "before", "after": tmp / "after"}
        for d in dirs.values():
            d.mkdir()
        export_at(args.rev, args.config, dirs["before"], tmp)
        for name, graph in (("one-shot", cfg.one_shot), ("compact", cfg.pruned)):
            export(graph, dirs["after"] / f"{name}.onnx", channel_multiple=16)
        sessions = {
            (v, n): ort_session(d / f"{n}.onnx", args.threads) for v, d in dirs.items() for n in ("one-shot", "compact")
        }
    size, channels = cfg.pruned.spec.input.size, cfg.pruned.spec.input.channels
    print(f"{args.config}: ideal {ideal:.2f}x; onnxruntime, {args.threads} threads; before: exporter at {args.rev}")
    rng = np.random.default_rng(0)
    for batch, rounds in ((1, 6 * args.rounds), (32, args.rounds)):
        x = rng.standard_normal((batch, channels, size, size)).astype(np.float32)
        outs = {k: s.run(None, {"input": x})[0] for k, s in sessions.items()}
        for name in ("one-shot", "compact"):
            diff = float(np.abs(outs["before", name] - outs["after", name]).max())
            assert diff < 1e-4, f"{name}: the two exports differ by {diff}"
        feed = {"input": x}
        contenders = {k: (lambda s=s, feed=feed: s.run(None, feed)) for k, s in sessions.items()}
        med = {k: 1e3 * t for k, t in race(contenders, rounds).items()}
        for version in ("before", "after"):
            sp = med[version, "one-shot"] / med[version, "compact"]
            print(
                f"batch {batch:2d} {version:6s}: one-shot {med[version, 'one-shot']:7.1f} ms, compact "
                f"{med[version, 'compact']:7.1f} ms: speedup {sp:.2f}x = {100 * sp / ideal:.0f}% of the ideal"
            )


if __name__ == "__main__":
    main()
