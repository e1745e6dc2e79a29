"""Issue 19's figures: hostile input refused fast and small, and the size estimate's accuracy.

Part 1, the front door. Each case is a fresh ``cnas-ir`` process under ``/usr/bin/time -f %M``
(peak resident set, KiB); its time is the process's wall time minus the median wall time of
``cnas-ir --version`` measured the same way (start-up: Python, click, the package). Cases: the
three specs of the issue (a 1 KB YAML whose aliases expand nine levels deep, ``channels:
1000000``, ``cells_per_stack: 100000``) given to ``build``, and three hostile ``.cnas`` files
given to ``stats`` (a ~1 MB file whose deflated member expands to 1 GiB, 10,000 extra members,
a safetensors header length field of 2^40). Targets: exit 2, one line of at most 300
characters, under 1 s beyond start-up, at most 300 MB.

Part 2, ``build --dry-run`` on the paper config against what is measured: the IR's and the
weights' bytes against the arrays' actual bytes (target: within 10%), and the activation
estimate against the peak allocation of one training step (zero_grad, forward, cross-entropy,
backward) at batch 32 of the module ``cnas-ir train`` trains (``lower(graph, "compact")``),
from the CPU profiler's memory records (target: within 25%).

    python benchmarks/bench_edges.py [--repeat 5] [--skip-activations]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "cnas_ir"]

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(8)
) + "name: *i\n"  # fmt: skip


def timed(args: list[str], cwd: Path) -> tuple[int, str, float, float]:
    """(exit code, stderr, wall seconds, peak MB) of one fresh process."""
    with tempfile.NamedTemporaryFile(suffix=".time") as t:
        t0 = time.perf_counter()
        p = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", t.name, *CLI, *args], cwd=cwd, capture_output=True, text=True
        )
        wall = time.perf_counter() - t0
        peak_kib = int(Path(t.name).read_text().split()[-1])
    return p.returncode, p.stderr, wall, peak_kib / 1024


def hostile_artifacts(folder: Path) -> dict[str, Path]:
    """The three hostile .cnas files, made from a real artifact of examples/tiny.yaml."""
    import cnas_ir
    from cnas_ir.format import to_bytes

    with zipfile.ZipFile(io.BytesIO(to_bytes(cnas_ir.build(ROOT / "examples" / "tiny.yaml")))) as z:
        members = {n: z.read(n) for n in z.namelist()}

    def write(name: str, members: dict[str, bytes], add=None) -> Path:
        manifest = json.loads(members["cnas.json"])
        manifest["members"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items() if n != "cnas.json"}
        path = folder / name
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("cnas.json", json.dumps(manifest), compress_type=zipfile.ZIP_DEFLATED)
            for n, d in members.items():
                if n != "cnas.json":
                    z.writestr(n, d, compress_type=zipfile.ZIP_DEFLATED if n.endswith(".json") else zipfile.ZIP_STORED)
            if add is not None:
                add(z)
        return path

    def bomb(z: zipfile.ZipFile) -> None:
        info = zipfile.ZipInfo("history.json")
        info.compress_type = zipfile.ZIP_DEFLATED
        chunk = b" " * (16 << 20)
        with z.open(info, "w") as f:
            for _ in range(64):  # 1 GiB
                f.write(chunk)

    def extra(z: zipfile.ZipFile) -> None:
        for i in range(10_000):
            z.writestr(f"extra/{i}.bin", b"x")

    header = dict(members)
    header["graph.safetensors"] = (1 << 40).to_bytes(8, "little") + members["graph.safetensors"][8:]
    return {
        "1 GiB deflate bomb": write("bomb.cnas", {k: v for k, v in members.items() if k != "history.json"}, bomb),
        "10,000 extra members": write("extra.cnas", members, extra),
        "header length 2^40": write("header.cnas", header),
    }


def front_door(repeat: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        specs = {
            "alias bomb (1 KB YAML)": ALIAS_BOMB,
            "nasnet.channels: 1000000": "name: big\nnasnet: {channels: 1000000}\n",
            "nasnet.cells_per_stack: 100000": "name: deep\nnasnet: {cells_per_stack: 100000}\n",
        }
        cases: dict[str, list[str]] = {}
        for i, (label, text) in enumerate(specs.items()):
            (folder / f"s{i}.yaml").write_text(text)
            cases[label] = ["build", f"s{i}.yaml", "-o", "never.cnas"]
        for label, path in hostile_artifacts(folder).items():
            size = path.stat().st_size
            cases[f"{label} ({size / 1e6:.2f} MB file)"] = ["stats", path.name]
        start = [timed(["--version"], folder)[2] for _ in range(repeat)]
        base = statistics.median(start)
        print(f"start-up (cnas-ir --version): median {base * 1000:.0f} ms over {repeat}")
        print("| case | exit | stderr lines | longest line | s beyond start-up (median, max) | peak MB (max) |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, args in cases.items():
            runs = [timed(args, folder) for _ in range(repeat)]
            codes = {r[0] for r in runs}
            lines = runs[0][1].splitlines()
            extra = [r[2] - base for r in runs]
            print(
                f"| {label} | {','.join(map(str, sorted(codes)))} | {len(lines)} | {max(map(len, lines), default=0)} "
                f"| {statistics.median(extra):.3f}, {max(extra):.3f} | {max(r[3] for r in runs):.0f} |"
            )
        print("stderr of each case, first run:")
        for label, args in cases.items():
            print(f"  {label}: {timed(args, folder)[1].strip()}")
        assert not (folder / "never.cnas").exists()


def peak_training_bytes(graph, batch: int) -> int:
    """Peak of the running sum of the CPU profiler's memory records over one training step."""
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from cnas_ir.backends.pytorch import lower

    spec = graph.spec
    module = lower(graph, "compact").train()
    x = torch.randn(batch, spec.input.channels, spec.input.size, spec.input.size)
    y = torch.randint(0, spec.classes, (batch,))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        module.zero_grad(set_to_none=True)
        F.cross_entropy(module(x), y).backward()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    return max(itertools.accumulate(e.self_cpu_memory_usage for e in events))


def estimate_accuracy(activations: bool) -> None:
    import numpy as np

    import cnas_ir
    from cnas_ir.estimate import estimate, format_size
    from cnas_ir.spec import load_spec
    from cnas_ir.weights import weight_table

    spec = load_spec(ROOT / "examples" / "nasnet.yaml")
    e = estimate(spec)
    g = cnas_ir.build(spec)
    ir = sum(
        a.nbytes
        for a in (
            *(getattr(g, c) for c in ("kind", "cell", "node", "op", "start", "size", "res", "alive", "src")),
            g.saliency, g.bundle_kind, g.bundle_src, g.bundle_dst, g.vertex_group, g.op_of_vertex, g.x_cost, g.x_ids,
        )
    )  # fmt: skip
    table = weight_table(g)
    weights = sum(4 * int(np.prod(i.shape)) for i in table.values())
    rows = [
        ("IR (columns + derived columns)", e.ir_bytes, ir),
        ("weights (float32, one-shot shapes)", e.weight_bytes, weights),
    ]
    if activations:
        import torch

        torch.manual_seed(0)
        batch = 32
        spec32 = spec.model_copy(update={"train": spec.train.model_copy(update={"batch_size": batch})})
        rows.append(
            (
                f"activations, training step at batch {batch}",
                estimate(spec32).activation_bytes,
                peak_training_bytes(g, batch),
            )
        )
    print(f"\nbuild --dry-run of {spec.name} against measured bytes")
    print("| quantity | estimate | measured | estimate / measured |")
    print("|---|---:|---:|---:|")
    for label, est, got in rows:
        print(f"| {label} | {format_size(est)} | {format_size(got)} | {est / got:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-activations", action="store_true", help="skip the profiled training step (about a minute)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    front_door(args.repeat)
    estimate_accuracy(not args.skip_activations)


if __name__ == "__main__":
    main()
