"""Is the compiled network as fast as its multiply-adds say? Compact vs one-shot, and a peer.

One run measures, as ratios taken in the same process from interleaved rounds (medians):

- **PyTorch eager** (``lower(graph, "compact").eval()`` under ``torch.inference_mode``) and
  **onnxruntime** (CPU provider, the exporter's model), batch 1 and 32; each runtime's models
  race among themselves (the onnxruntime race after the PyTorch one), so neither runtime's
  calls sit between the other's;
- each model in its best layout: PyTorch runs every model in channels-first *and* in
  channels_last (module and input converted) and keeps the faster median per model;
  onnxruntime chooses its own (NCHWc) layout, and every model is exported with each
  ``--channel-multiple`` (default 8 and 16: the SIMD blocks of AVX2 and AVX-512) and keeps
  the faster;
- the speedup of the compact network over the one-shot network (both lowered by cnas-ir from
  the same spec) against the ideal speedup, the multiply-add ratio ``macs / macs_live``;
- configurations: the paper config pruned to rho 0.46 and 0.2 with random masks
  (``random_saliency``) and with *Taylor-shaped* masks, plus ``examples/tiny.yaml`` at 0.46;
- the **peer**: group-level channel pruning at the compact network's parameter count, as a plain
  dense PyTorch module of the one-shot architecture (:class:`PlainNasnet`) with every cell
  uniformly narrower (:func:`group_pruned_peer`: Torch-Pruning itself cannot prune the cell
  states of this architecture, see there); compared by latency per multiply-add (its
  multiply-adds counted by ``torch.utils.flop_counter``);
- with ``--before``, the per-op PyTorch path too (the same modules with the fused inference
  path switched off): the before/after of that optimisation in the same run.

Taylor-shaped masks emulate the shape of the paper's Table 1 without training: Taylor saliency
on CIFAR keeps more in reduction cells and in late cells keeps the copies of the cell inputs
(d -> x) rather than those of earlier nodes (z -> x). The score of an x vertex is a uniform
random number times a factor that grows with depth t = cell position in [0, 1] for d-copies
(``1 + 2 t``) and shrinks for z-copies (``1 - 0.7 t``), doubled in reduction cells; pruning then
runs the ordinary iterative ``prune_to_rho`` on it.

Weights are the lowering's seeded initialisation with BN statistics calibrated by one
train-mode forward (defaults let activations explode over 20 cells, and inf/denormal arithmetic
would distort timings). ``OMP_WAIT_POLICY`` defaults to PASSIVE (see bench_lower.py),
``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` to 16384 (see below the imports)::

    python benchmarks/bench_speed.py [--configs paper-random-0.46 ...] [--batches 1 32]
        [--rounds 5] [--ort-rounds-b1 15] [--threads 2] [--channel-multiple 8 16] [--no-ort]
        [--no-peer] [--before] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP
# oneDNN keeps 1024 conv primitives by default. A compact network has ~150 distinct conv shapes
# per layout and batch (every node its own channel count); racing ten module variants in one
# process overflows that, and every call would re-create its primitives (compact, batch 1: 107
# ms alone, 231 ms interleaved with the one-shot; 112 ms interleaved with room for all).
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import cnas_ir  # noqa: E402
from cnas_ir.backends.pytorch import lower, to_graph  # noqa: E402
from cnas_ir.ir import Edge, Graph  # noqa: E402
from cnas_ir.passes.build import build_graph  # noqa: E402
from cnas_ir.passes.fold import fold  # noqa: E402
from cnas_ir.passes.prune import prune_to_rho, random_saliency  # noqa: E402
from cnas_ir.passes.stats import compute_stats  # noqa: E402

__all__ = ["PlainNasnet", "main", "taylor_shaped_saliency"]

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ["paper-random-0.46", "paper-taylor-0.46", "paper-random-0.2", "paper-taylor-0.2", "tiny-random-0.46"]


def taylor_shaped_saliency(g: Graph, seed: int = 0) -> Graph:
    """Random scores shaped like Table 1: late cells keep d -> x, reduction cells keep more."""
    rng = np.random.default_rng(seed)
    sal = np.full(g.num_vertices, np.nan, dtype=np.float32)
    n = len(g.cells)
    for cell in g.cells:
        t = (cell.index - 1) / max(n - 1, 1)
        boost = 2.0 if cell.kind == "reduction" else 1.0
        d_groups = np.asarray(cell.d)
        for op in cell.ops:
            sl = g.group_slice(op.x)
            v = sl.start + np.flatnonzero(g.alive[sl])
            from_d = np.isin(g.vertex_group[g.src[v]], d_groups)
            factor = np.where(from_d, 1.0 + 2.0 * t, 1.0 - 0.7 * t) * boost
            sal[v] = rng.random(v.size) * factor
    return g.replace(saliency=sal)


def calibrated(g: Graph, seed: int = 0) -> Graph:
    """``g`` with the lowering's seeded init and BN running stats from one train-mode forward."""
    torch.manual_seed(seed)
    m = lower(g, "compact", weights=False)
    calibrate(m, g.spec.input.channels, g.spec.input.size)
    return to_graph(g, m)


def calibrate(m: nn.Module, channels: int, size: int) -> None:
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.momentum = None
    m.train()
    with torch.no_grad():
        m(torch.randn(16, channels, size, size))
    m.eval()


# ---- the peer: a plain dense module of the one-shot architecture ---------------------------------


class _Pre(nn.Module):
    def __init__(self, cin: int, cout: int, factorized: bool) -> None:
        super().__init__()
        self.factorized = factorized
        if factorized:
            self.conv1 = nn.Conv2d(cin, cout // 2, 1, stride=2, bias=False)
            self.conv2 = nn.Conv2d(cin, cout - cout // 2, 1, stride=2, bias=False)
        else:
            self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout, affine=False)

    def forward(self, a: Tensor) -> Tensor:
        h = torch.relu(a)
        if not self.factorized:
            return self.bn(self.conv(h))
        shifted = nn.functional.pad(h, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv1(h), self.conv2(shifted)], 1))


class _Op(nn.Module):
    """BN(PW(DW(x))); in a reduction cell two DW convs: over d at stride 2, over z at stride 1."""

    def __init__(self, n_d: int, n_z: int, width: int, reduction: bool) -> None:
        super().__init__()
        self.reduction = reduction
        if reduction:
            self.dw_d = nn.Conv2d(n_d, n_d, 3, stride=2, padding=1, groups=n_d, bias=False)
            self.dw_z = nn.Conv2d(n_z, n_z, 3, padding=1, groups=n_z, bias=False) if n_z else None
        else:
            self.dw = nn.Conv2d(n_d + n_z, n_d + n_z, 3, padding=1, groups=n_d + n_z, bias=False)
        self.pw = nn.Conv2d(n_d + n_z, width, 1, bias=False)
        self.bn = nn.BatchNorm2d(width, affine=False)

    def forward(self, d: Tensor, zs: list[Tensor]) -> Tensor:
        if not self.reduction:
            h = self.dw(torch.cat([d, *zs], 1))
        elif self.dw_z is None:
            h = self.dw_d(d)
        else:
            h = torch.cat([self.dw_d(d), self.dw_z(torch.cat(zs, 1))], 1)
        return self.bn(self.pw(h))


class _Cell(nn.Module):
    def __init__(self, g: Graph, index: int) -> None:
        super().__init__()
        cell = g.cells[index - 1]
        (e,) = np.flatnonzero(g.bundle_dst == cell.d[0])
        factorized = Edge(int(g.bundle_kind[e])) == Edge.FACTORIZED_REDUCE
        a, b = (int(g.size[i]) for i in cell.inputs)
        w = cell.width
        self.d_a, self.d_b = _Pre(a, w, factorized), _Pre(b, w, False)
        self.reduction = cell.kind == "reduction"
        self.nodes = nn.ModuleList(
            nn.ModuleList(_Op(2 * w, k * w, w, self.reduction) for _ in node.ops) for k, node in enumerate(cell.nodes)
        )

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        d = torch.relu(torch.cat([self.d_a(a), self.d_b(b)], 1))
        zs: list[Tensor] = []
        for ops in self.nodes:
            z = sum(op(d, [torch.relu(s) for s in zs]) for op in ops)
            zs.append(z)
        return torch.cat(zs, 1)


class PlainNasnet(nn.Module):
    """The one-shot NASNet of ``g`` as ordinary modules (no gathers, no masks): what a generic
    structured-pruning tool sees. Same parameter count as the one-shot lowering."""

    def __init__(self, g: Graph) -> None:
        super().__init__()
        n = g.spec.nasnet
        assert n is not None
        stem = int(g.size[g.stem_group])
        conv = nn.Conv2d(g.spec.input.channels, stem, 3, padding=1, bias=False)
        self.stem = nn.Sequential(conv, nn.BatchNorm2d(stem))
        self.cells = nn.ModuleList(_Cell(g, c.index) for c in g.cells)
        self.head = nn.Linear(int(g.size[g.cells[-1].c]), int(g.size[g.head_group]))

    def forward(self, x: Tensor) -> Tensor:
        s = self.stem(x)
        prev_prev = prev = s
        for cell in self.cells:
            prev_prev, prev = prev, cell(prev_prev, prev)
        return self.head(prev.mean((2, 3)))


def group_pruned_peer(g: Graph, params: int) -> tuple[nn.Module, int]:
    """The group-level peer: PlainNasnet of ``g``'s spec with every cell uniformly narrower
    (channels C' instead of C), C' chosen so its parameter count is the closest to ``params``;
    and C'. Uniform group pruning (one ratio for every channel group) gives this structure.

    Built by hand because Torch-Pruning 1.6.1 cannot prune our states: on PlainNasnet it builds
    the dependency graph (43 groups) but prunes only the stem's channels -- the groups of the
    cell states, which feed concatenations read by depthwise convs, stay whole -- so a ratio of
    0.94 leaves 6.9 M of 9.9 M parameters on the paper config.
    """
    n = g.spec.nasnet
    assert n is not None
    best: tuple[int, int] | None = None
    for c in range(2, n.channels + 1):
        spec = g.spec.model_copy(update={"nasnet": n.model_copy(update={"channels": c})})
        p = compute_stats(build_graph(spec)).model_params
        if best is None or abs(p - params) < abs(best[1] - params):
            best = (c, p)
    assert best is not None
    spec = g.spec.model_copy(update={"nasnet": n.model_copy(update={"channels": best[0]})})
    torch.manual_seed(0)
    return PlainNasnet(build_graph(spec)).eval(), best[0]


def flop_macs(m: nn.Module, channels: int, size: int) -> int:
    """Multiply-adds of one image by torch's FLOP counter (convs and matmuls: 2 FLOPs each)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        m(torch.randn(1, channels, size, size))
    return counter.get_total_flops() // 2


# ---- configurations --------------------------------------------------------------------------------


@dataclass
class Config:
    name: str
    one_shot: Graph
    pruned: Graph
    macs: int
    macs_live: int
    params: int
    params_live: int


def make_config(name: str, seed: int) -> Config:
    spec_name, criterion, rho = name.split("-")
    g = cnas_ir.build(ROOT / "examples" / "tiny.yaml") if spec_name == "tiny" else cnas_ir.build({"name": "p"})
    saliency = random_saliency if criterion == "random" else taylor_shaped_saliency
    pruned = fold(prune_to_rho(g, float(rho), score=lambda h: saliency(h, seed), criterion=criterion))
    full, st = compute_stats(g), compute_stats(pruned)
    return Config(
        name,
        calibrated(g, seed),
        calibrated(pruned, seed),
        full.macs,
        st.macs_live,
        full.model_params,
        st.model_params_live,
    )


# ---- timing -----------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def race(contenders: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per contender over ``rounds`` interleaved rounds, after one warm-up each."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def torch_contenders(models: dict[str, nn.Module], x: Tensor) -> dict[str, Callable[[], object]]:
    """Each model in channels-first (``name/cf``) and channels_last (``name/cl``)."""
    out: dict[str, Callable[[], object]] = {}
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for name, m in models.items():
        m_cl = copy.deepcopy(m).to(memory_format=torch.channels_last)
        out[f"{name}/cf"] = lambda m=m: m(x)
        out[f"{name}/cl"] = lambda m=m_cl: m(x_cl)
    return out


def best(med: dict[str, float], name: str) -> tuple[float, str]:
    """The faster layout of model ``name``: (seconds, layout)."""
    return min((t, k.split("/")[1]) for k, t in med.items() if k.split("/")[0] == name)


def ort_session(  # noqa: ANN201 - onnxruntime is imported lazily
    model: Path | bytes, threads: int, *, spin: bool = False, nchwc: bool = True, profile_prefix: str | None = None
):
    """An onnxruntime CPU session: ``threads`` intra-op threads, one inter-op, no spinning
    unless ``spin``; ``nchwc`` False disables the blocked-layout transformer; a
    ``profile_prefix`` turns the profiler on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if profile_prefix is not None:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    source = model if isinstance(model, bytes) else str(model)
    disabled = [] if nchwc else ["NchwcTransformer"]
    return ort.InferenceSession(
        source, sess_options=options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (each: every contender once, interleaved)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--before", action="store_true", help="also time the per-op (unfused) PyTorch path")
    ap.add_argument(
        "--ort-rounds-b1", type=int, default=15, help="onnxruntime rounds at batch 1 (cheap: ~0.1 s per model)"
    )
    ap.add_argument(
        "--channel-multiple", type=int, nargs="+", default=[8, 16], help="ONNX export option; each model keeps its best"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, threads {args.threads}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
        f"ONEDNN_PRIMITIVE_CACHE_CAPACITY={os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY']}, "
        f"rounds {args.rounds}"
    )
    rows: list[dict[str, object]] = []
    one_shots: dict[str, Graph] = {}
    for cname in args.configs:
        t0 = time.perf_counter()
        cfg = make_config(cname, args.seed)
        one_shots.setdefault(cname.split("-")[0], cfg.one_shot)
        ideal = cfg.macs / cfg.macs_live
        models: dict[str, nn.Module] = {
            "one-shot": lower(cfg.one_shot, "compact").eval(),
            "compact": lower(cfg.pruned, "compact").eval(),
        }
        peer_info = ""
        if args.before:  # the per-op reference path of the same modules: the "before" of _FusedCell
            for name in ("one-shot", "compact"):
                ref = copy.deepcopy(models[name])
                for cell in ref._cells():
                    cell._fused = None
                models[f"{name}-perop"] = ref
        if not args.no_peer:
            peer, width = group_pruned_peer(cfg.one_shot, cfg.params_live)
            calibrate(peer, cfg.one_shot.spec.input.channels, cfg.one_shot.spec.input.size)
            models["peer"] = peer
            peer_params = sum(p.numel() for p in peer.parameters())
            peer_macs = flop_macs(peer, cfg.one_shot.spec.input.channels, cfg.one_shot.spec.input.size)
            peer_info = f"; peer (cells uniformly C={width}): {peer_params:,} params, {peer_macs:,} MACs"
        print(
            f"\n== {cname}: rho {compute_stats(cfg.pruned).rho:.3f}, params {cfg.params_live:,} / {cfg.params:,}, "
            f"MACs {cfg.macs_live:,} / {cfg.macs:,} (ideal speedup {ideal:.2f}x){peer_info} "
            f"[setup {time.perf_counter() - t0:.0f} s]"
        )
        sessions = {}
        tmp = tempfile.TemporaryDirectory()
        if not args.no_ort:
            from cnas_ir.backends.onnx import export

            for name, graph in (("one-shot", cfg.one_shot), ("compact", cfg.pruned)):
                for cm in args.channel_multiple:
                    path = Path(tmp.name) / f"{name}-{cm}.onnx"
                    export(graph, path, channel_multiple=cm)
                    sessions[f"ort-{name}/cm{cm}"] = ort_session(path, args.threads)
        size, channels = cfg.one_shot.spec.input.size, cfg.one_shot.spec.input.channels
        for batch in args.batches:
            rounds = args.rounds
            x = torch.randn(batch, channels, size, size)
            with torch.inference_mode():
                med = race(torch_contenders(models, x), rounds)
            xn = x.numpy()
            ort_rounds = args.ort_rounds_b1 if batch == 1 else rounds
            med |= race({k: (lambda s=s, xn=xn: s.run(None, {"input": xn})) for k, s in sessions.items()}, ort_rounds)
            row: dict[str, object] = {"config": cname, "batch": batch, "ideal": ideal, "rounds": rounds}
            if sessions:
                row["ort_rounds"] = ort_rounds
            row |= {f"{k}_ms": 1e3 * v for k, v in med.items()}
            t_one, l_one = best(med, "one-shot")
            t_cmp, l_cmp = best(med, "compact")
            sp = t_one / t_cmp
            row |= {"torch_speedup": sp, "torch_of_ideal": sp / ideal, "layouts": f"{l_one}/{l_cmp}"}
            line = (
                f"batch {batch:2d}: torch one-shot {1e3 * t_one:8.1f} ms ({l_one}), compact {1e3 * t_cmp:8.1f} ms "
                f"({l_cmp}): {sp:.2f}x = {100 * sp / ideal:.0f}% of ideal"
            )
            if sessions:
                (t_oo, cm_one), (t_oc, cm_cmp) = best(med, "ort-one-shot"), best(med, "ort-compact")
                so = t_oo / t_oc
                row |= {"ort_speedup": so, "ort_of_ideal": so / ideal, "ort_channel_multiples": f"{cm_one}/{cm_cmp}"}
                line += (
                    f" | ort one-shot {1e3 * t_oo:7.1f} ms ({cm_one}), compact "
                    f"{1e3 * t_oc:7.1f} ms ({cm_cmp}): {so:.2f}x = {100 * so / ideal:.0f}%"
                )
            if "peer" in models:
                t_peer, l_peer = best(med, "peer")
                per_mac = (t_cmp / cfg.macs_live) / (t_peer / peer_macs)
                row |= {"peer_ms": 1e3 * t_peer, "peer_layout": l_peer, "cnas_per_mac_over_peer": per_mac}
                line += f" | peer {1e3 * t_peer:7.1f} ms ({l_peer}), CNAS/peer time per MAC {per_mac:.2f}"
            if args.before:
                t_one0, _ = best(med, "one-shot-perop")
                t_cmp0, _ = best(med, "compact-perop")
                # Best vs best: each model at its fastest layout *and* path.
                bb = min(t_one, t_one0) / min(t_cmp, t_cmp0)
                row |= {"torch_perop_speedup": t_one0 / t_cmp0, "torch_best_speedup": bb}
                line += f" | per-op path: {t_one0 / t_cmp0:.2f}x = {100 * t_one0 / t_cmp0 / ideal:.0f}%"
                line += f" | best of paths: {bb:.2f}x = {100 * bb / ideal:.0f}%"
            print(line, flush=True)
            print("   all: " + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in med.items()), flush=True)
            rows.append(row)
        tmp.cleanup()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
