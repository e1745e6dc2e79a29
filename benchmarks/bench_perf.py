"""Issue 17's acceptance benchmark: does a pruned network train and run in proportion to its multiply-adds?

One process builds four networks of one configuration and times them against each other:

- ``plain``: :class:`PlainOneShot` of the paper spec -- the one-shot NASNet written as ordinary
  PyTorch modules in this file, *not* through cnas-ir's lowering: the reference for what the
  one-shot network costs when nothing is pruned;
- ``oneshot``: cnas-ir's lowering of the same one-shot graph, ``lower(one_shot, "compact")``;
- ``compact``: cnas-ir's lowering of the pruned and folded graph, ``lower(pruned, "compact")``;
- ``peer``: :class:`PlainOneShot` of the same spec with every cell uniformly narrower
  (``nasnet.channels`` = 24 at rho 0.46 on the paper config: 4.54 M parameters, ~697 M
  multiply-adds, the compact network's parameter count; for other configurations the C whose
  PlainOneShot has the parameter count closest to the compact network's).

The baselines (``plain`` and ``peer``) are defined as follows, and **must not be changed after
the commit that adds this file: they define the targets**. Stem: conv 3x3 (pad 1, no bias) +
BatchNorm2d(affine). Per cell, preprocessing d_a = BN(Conv1x1(ReLU(a))), d_b = BN(Conv1x1(ReLU(b))),
BN affine=False; when d_a is a factorized reduce (a at twice b's resolution), two stride-2 1x1
convs of C//2 and C - C//2 outputs, the second over ReLU(a) shifted by one pixel, concatenated,
then BN. States: ReLU computed once per state (ReLU(d_a | d_b) once for the cell, ReLU(z_k) once
when z_k is made, and only if a later node reads it). Each node concatenates the states it reads,
[d, z_1 .. z_{k-1}], once and shares the result between its ops; each op is a depthwise 3x3 conv
(no bias) over that concatenation, a pointwise 1x1 conv to C (no bias) and BatchNorm2d(C,
affine=False); z_k is the sum of the node's ops. In a reduction cell the depthwise conv has
stride 2 over the d channels and stride 1 over the z channels (z is already reduced), outputs
concatenated d part first. The cell output is concat(z_1 .. z_K), raw (not ReLU'd). Head: global
average pool + Linear. No masks, no gathers, no dropout. The spec is the paper's
(``cnas_ir.build({"name": "p", "nasnet": {"spatial_dropout": 0.0}})``: spatial dropout off, for
every model). PlainOneShot of the one-shot graph has exactly the parameter count of cnas-ir's
one-shot lowering (checked on every run).

Weights: cnas-ir's models take the lowering's seeded initialisation, the baselines PyTorch's
seeded default one; every model's BN running statistics come from one train-mode forward of 16
random images with momentum None (defaults let activations explode over 20 cells, and
inf/denormal arithmetic would distort timings).

Measures (``--measures``, default all):

- ``train``: one training step at batch 32: ``model.zero_grad(set_to_none=True)``, a train-mode
  forward, ``F.cross_entropy``, ``.backward()``; no optimizer step, no data loading (a fixed
  random input and fixed labels);
- ``infer32``, ``infer1``: an eval-mode forward under ``torch.inference_mode()``, batch 32 and 1;
- ``ort32``, ``ort1``: onnxruntime (CPU provider) on ``cnas_ir.backends.onnx.export`` of the
  one-shot and the compact graph (there is no plain ONNX: the baseline is cnas-ir's own one-shot
  export), each model keeping the faster of ``--channel-multiple`` 8 and 16; ``--no-ort`` skips
  them.

Each model runs in its best layout: per measure and model, an NCHW copy and a channels_last copy
(module and input converted) are called solo, one warm-up call then two timed calls each, and the
faster (by the better of its two calls) is kept. Then the race: one warm-up call per model, then
``--rounds`` interleaved rounds (every model once per round, in a fixed order: plain, oneshot,
compact, peer), the median per model. onnxruntime races every export (both models, each channel
multiple) and keeps each model's faster median; at batch 1 it runs ``--ort-rounds-b1`` (40) rounds,
about 2 s: a 20 ms call is short against the seconds-long bursts of load on a shared machine,
which slow both models by up to 45% (measured) and 15 rounds could fall wholly inside.

Report: the median ms per measure and model, with the chosen layout, and the acceptance ratios
against their targets (PASS/FAIL per line), ideal = one-shot multiply-adds / compact live
multiply-adds (``compute_stats``):

- compact % of ideal vs plain, (plain / compact) / ideal: train >= 80%, infer32 >= 85%,
  infer1 >= 80%; onnxruntime (ort one-shot / ort compact) / ideal: ort32 >= 80%, ort1 >= 75%;
- train compact / peer time <= 1.15 (and, for information, compact vs peer time per
  multiply-add, both counted by ``torch.utils.flop_counter``);
- oneshot / plain time <= 1.05 in train, infer32 and infer1.

``OMP_WAIT_POLICY`` defaults to PASSIVE and ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` to 16384 (see
bench_speed.py). glibc's malloc is pinned (``--malloc pinned``, the default: the script runs
itself again with ``MALLOC_MMAP_THRESHOLD_`` = 32 MiB and ``MALLOC_TRIM_THRESHOLD_`` = 4 GiB in
the environment): freed memory is kept for reuse, whatever the process allocated before. Left
to itself, glibc moves both thresholds with what the process has freed, so one model's
allocations decide whether another's tensors come back as reused memory or as fresh pages that
fault on first write: ``plain``'s training step page-faulted about 300,000 times (1.2 GB) in
some processes and 30,000 in others, and took 4.8-5.3 s against 3.0-3.3 s (measured, the same
baseline, cnas-ir's kernels on and off); pinned, 2.8-2.9 s either way. ``--malloc default``
leaves glibc's defaults. Command lines::

    python benchmarks/bench_perf.py                       # paper-random-0.46, every measure
    python benchmarks/bench_perf.py --config paper-taylor-0.2 --measures train infer1 --json out.json
    python benchmarks/bench_perf.py --config tiny-random-0.46 --rounds 1      # a quick check
    python benchmarks/bench_perf.py --smoke               # build, count, one call per measure and model
    python benchmarks/bench_perf.py --profile compact     # torch profiler on one training step
        [--threads 2] [--rounds 5] [--ort-rounds-b1 40] [--channel-multiple 8 16] [--no-ort] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")  # room for every model's conv primitives

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import calibrate, calibrated, ort_session, race, taylor_shaped_saliency, timed  # noqa: E402

import cnas_ir  # noqa: E402
from cnas_ir.backends.pytorch import lower  # noqa: E402
from cnas_ir.ir import Edge, Graph  # noqa: E402
from cnas_ir.passes.build import build_graph  # noqa: E402
from cnas_ir.passes.fold import fold  # noqa: E402
from cnas_ir.passes.prune import prune_to_rho, random_saliency  # noqa: E402
from cnas_ir.passes.stats import compute_stats  # noqa: E402

__all__ = ["CONFIGS", "MEASURES", "MODELS", "PlainOneShot", "count_macs", "main", "make_setup", "peer_channels"]

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ["paper-random-0.46", "paper-random-0.2", "paper-taylor-0.46", "paper-taylor-0.2", "tiny-random-0.46"]
MEASURES = ["train", "infer32", "infer1", "ort32", "ort1"]
MODELS = ["plain", "oneshot", "compact", "peer"]
PAPER_SPEC: dict[str, Any] = {"name": "p", "nasnet": {"spatial_dropout": 0.0}}
PEER_C_AT_046 = 24  # the peer on the paper config at rho 0.46: 4.54 M parameters, ~697 M MACs
TRAIN_BATCH = 32


# ---- the baselines: plain PyTorch modules (do not change: they define the targets) ----------------


class _Preprocess(nn.Module):
    """d = BN(Conv1x1(ReLU(a))), BN affine=False; factorized: two stride-2 convs, the second shifted."""

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
        h = F.relu(a)
        if not self.factorized:
            return self.bn(self.conv(h))
        shifted = F.pad(h, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv1(h), self.conv2(shifted)], 1))


class _SepOp(nn.Module):
    """BN(PW(DW3x3(h))); in a reduction cell DW is stride 2 over d and stride 1 over z, d part first."""

    def __init__(self, n_d: int, n_z: int, width: int, reduction: bool) -> None:
        super().__init__()
        self.reduction = reduction
        n = n_d + n_z
        if reduction:
            self.dw_d = nn.Conv2d(n_d, n_d, 3, stride=2, padding=1, groups=n_d, bias=False)
            self.dw_z = nn.Conv2d(n_z, n_z, 3, padding=1, groups=n_z, bias=False) if n_z else None
        else:
            self.dw = nn.Conv2d(n, n, 3, padding=1, groups=n, bias=False)
        self.pw = nn.Conv2d(n, width, 1, bias=False)
        self.bn = nn.BatchNorm2d(width, affine=False)

    def forward(self, h: Tensor, z: Tensor | None = None) -> Tensor:
        """Normal cell: ``h`` is the node's concatenation [d, z_1..]; reduction: ``h`` = d, ``z`` = [z_1..]."""
        if not self.reduction:
            u = self.dw(h)
        elif self.dw_z is None or z is None:
            u = self.dw_d(h)
        else:
            u = torch.cat([self.dw_d(h), self.dw_z(z)], 1)
        return self.bn(self.pw(u))


class _PlainCell(nn.Module):
    def __init__(self, g: Graph, index: int) -> None:
        super().__init__()
        cell = g.cells[index - 1]
        (e,) = np.flatnonzero(g.bundle_dst == cell.d[0])
        factorized = Edge(int(g.bundle_kind[e])) == Edge.FACTORIZED_REDUCE
        a, b = (int(g.size[i]) for i in cell.inputs)
        w = cell.width
        self.d_a, self.d_b = _Preprocess(a, w, factorized), _Preprocess(b, w, False)
        self.reduction = cell.kind == "reduction"
        self.nodes = nn.ModuleList(
            nn.ModuleList(_SepOp(2 * w, k * w, w, self.reduction) for _ in node.ops)
            for k, node in enumerate(cell.nodes)
        )

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        d = F.relu(torch.cat([self.d_a(a), self.d_b(b)], 1))  # ReLU(d_a | d_b), once
        relu_z: list[Tensor] = []  # ReLU(z_k), each computed once, when z_k is made
        zs: list[Tensor] = []
        last = len(self.nodes) - 1
        for k, ops in enumerate(self.nodes):
            z_in: Tensor | None = None
            if self.reduction:  # d (stride 2) and the z states (stride 1) are read separately
                h = d
                if relu_z:
                    z_in = relu_z[0] if len(relu_z) == 1 else torch.cat(relu_z, 1)
            else:  # one concatenation per node, shared by its ops
                h = torch.cat([d, *relu_z], 1) if relu_z else d
            z: Tensor | None = None
            for op in ops:
                y = op(h, z_in)
                z = y if z is None else z + y
            assert z is not None
            zs.append(z)
            if k < last:
                relu_z.append(F.relu(z))
        return torch.cat(zs, 1)


class PlainOneShot(nn.Module):
    """The one-shot NASNet of ``g`` as ordinary PyTorch modules (the module docstring defines it).

    ``g`` is read for sizes only: cell widths and input sizes, reduction flags, factorized reduces.
    """

    def __init__(self, g: Graph) -> None:
        super().__init__()
        stem = int(g.size[g.stem_group])
        self.stem = nn.Sequential(
            nn.Conv2d(g.spec.input.channels, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem)
        )
        self.cells = nn.ModuleList(_PlainCell(g, c.index) for c in g.cells)
        self.head = nn.Linear(int(g.size[g.cells[-1].c]), int(g.size[g.head_group]))

    def forward(self, x: Tensor) -> Tensor:
        s = self.stem(x)
        prev_prev = prev = s
        for cell in self.cells:
            prev_prev, prev = prev, cell(prev_prev, prev)
        return self.head(prev.mean((2, 3)))


def _num_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _with_channels(g: Graph, channels: int) -> Graph:
    n = g.spec.nasnet
    assert n is not None
    return build_graph(g.spec.model_copy(update={"nasnet": n.model_copy(update={"channels": channels})}))


def plain_params(g: Graph) -> int:
    """Parameters of PlainOneShot(g), built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return _num_params(PlainOneShot(g))


def peer_channels(g: Graph, params: int) -> int:
    """The C in 2..channels whose PlainOneShot of ``g``'s spec has the parameter count closest to ``params``."""
    n = g.spec.nasnet
    assert n is not None
    return min(range(2, n.channels + 1), key=lambda c: (abs(plain_params(_with_channels(g, c)) - params), c))


def count_macs(m: nn.Module, channels: int, size: int) -> int:
    """Multiply-adds of one image by torch's FLOP counter (convs and matmuls: 2 FLOPs each).

    Counted on an eval-mode copy with autograd on, so cnas-ir's modules take their per-op path
    (the one training runs) and the model's BN statistics stay untouched.
    """
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(m).eval()
    with FlopCounterMode(display=False) as counter, torch.enable_grad():
        probe(torch.randn(1, channels, size, size))
    return counter.get_total_flops() // 2


def _calibrate(m: nn.Module, channels: int, size: int) -> nn.Module:
    """bench_speed.calibrate (one train-mode forward, momentum None), then BN momentum back to its default."""
    calibrate(m, channels, size)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.momentum = 0.1
    return m


# ---- the configuration --------------------------------------------------------------------------------


@dataclass
class Setup:
    config: str
    one_shot: Graph  # calibrated weights
    pruned: Graph  # pruned, folded, calibrated weights
    ideal: float  # one-shot macs / pruned macs_live
    rho: float
    peer_c: int
    models: dict[str, nn.Module]  # MODELS order, eval mode
    params: dict[str, int]
    macs: dict[str, int]  # torch.utils.flop_counter
    info: dict[str, Any] = field(default_factory=dict)


def make_setup(config: str, seed: int) -> Setup:
    """Build, prune (like bench_speed.make_config), calibrate and instantiate the four models."""
    spec_name, criterion, rho = config.split("-")
    g = cnas_ir.build(ROOT / "examples" / "tiny.yaml") if spec_name == "tiny" else cnas_ir.build(PAPER_SPEC)
    assert g.spec.nasnet is not None and g.spec.nasnet.spatial_dropout == 0.0
    saliency = random_saliency if criterion == "random" else taylor_shaped_saliency
    pruned = fold(prune_to_rho(g, float(rho), score=lambda h: saliency(h, seed), criterion=criterion))
    full, st = compute_stats(g), compute_stats(pruned)
    one_shot, pruned = calibrated(g, seed), calibrated(pruned, seed)
    channels, size = g.spec.input.channels, g.spec.input.size

    oneshot = lower(one_shot, "compact").eval()
    compact = lower(pruned, "compact").eval()
    torch.manual_seed(seed)
    plain = _calibrate(PlainOneShot(g), channels, size)
    # Self-check: the baseline is the same network as cnas-ir's one-shot lowering.
    if _num_params(plain) != oneshot.num_parameters():
        raise AssertionError(
            f"PlainOneShot has {_num_params(plain):,} parameters, the one-shot lowering {oneshot.num_parameters():,}"
        )
    closest = peer_channels(g, compact.num_parameters())
    peer_c = PEER_C_AT_046 if spec_name == "paper" and rho == "0.46" else closest
    torch.manual_seed(seed)
    peer = _calibrate(PlainOneShot(_with_channels(g, peer_c)), channels, size)
    models: dict[str, nn.Module] = {"plain": plain, "oneshot": oneshot, "compact": compact, "peer": peer}
    return Setup(
        config=config,
        one_shot=one_shot,
        pruned=pruned,
        ideal=full.macs / st.macs_live,
        rho=st.rho,
        peer_c=peer_c,
        models=models,
        params={k: _num_params(m) for k, m in models.items()},
        macs={k: count_macs(m, channels, size) for k, m in models.items()},
        info={"stats_macs": full.macs, "stats_macs_live": st.macs_live, "peer_c_closest": closest},
    )


# ---- timing ---------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """One way to run a model for one measure: a layout (``cf``/``cl``) or an ONNX channel multiple."""

    label: str
    fn: Callable[[], object]
    keep: object = None  # what the callable needs alive (a module copy, a session)


def _train_step(m: nn.Module, x: Tensor, y: Tensor) -> Callable[[], object]:
    def step() -> None:
        m.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()

    return step


def _infer(m: nn.Module, x: Tensor) -> Callable[[], object]:
    def forward() -> Tensor:
        with torch.inference_mode():
            return m(x)

    return forward


def torch_variants(measure: str, m: nn.Module, x: Tensor, y: Tensor) -> Iterator[Variant]:
    """NCHW and channels_last copies of ``m`` set up for ``measure``, one at a time (the caller drops losers)."""
    for layout in ("cf", "cl"):
        mc = copy.deepcopy(m)
        xc = x
        if layout == "cl":
            mc = mc.to(memory_format=torch.channels_last)
            xc = x.contiguous(memory_format=torch.channels_last)
        if measure == "train":
            mc.train()
            yield Variant(layout, _train_step(mc, xc, y), mc)
        else:
            mc.eval()
            yield Variant(layout, _infer(mc, xc), mc)


def choose(variants: Iterator[Variant]) -> tuple[Variant, dict[str, list[float]]]:
    """Each variant solo: one warm-up call, two timed calls; the one with the better best call wins."""
    winner: tuple[float, Variant] | None = None
    times: dict[str, list[float]] = {}
    for v in variants:
        v.fn()
        times[v.label] = [timed(v.fn), timed(v.fn)]
        t = min(times[v.label])
        if winner is None or t < winner[0]:
            winner = (t, v)
    assert winner is not None
    return winner[1], times


class OrtModels:
    """onnxruntime sessions of the one-shot and compact exports, one per channel multiple (lazy)."""

    def __init__(self, setup: Setup, channel_multiples: list[int], threads: int) -> None:
        from cnas_ir.backends.onnx import export

        self._tmp = tempfile.TemporaryDirectory()
        self.sessions: dict[str, dict[int, Any]] = {}
        for name, graph in (("oneshot", setup.one_shot), ("compact", setup.pruned)):
            self.sessions[name] = {}
            for cm in channel_multiples:
                path = Path(self._tmp.name) / f"{name}-{cm}.onnx"
                export(graph, path, channel_multiple=cm)
                self.sessions[name][cm] = ort_session(path, threads)

    def variants(self, name: str, x: np.ndarray) -> Iterator[Variant]:
        for cm, s in self.sessions[name].items():
            yield Variant(f"cm{cm}", lambda s=s: s.run(None, {"input": x}), s)

    def close(self) -> None:
        self.sessions.clear()
        self._tmp.cleanup()


# ---- the profile ----------------------------------------------------------------------------------------

_KINDS: list[tuple[str, tuple[str, ...]]] = [
    ("native gather+depthwise", ("_readconv",)),  # cnas-ir's kernels (buffered._ReadConv), forward and backward
    ("gather/index/scatter", ("index", "gather", "scatter", "take")),
    ("convolution", ("conv",)),
    ("batch_norm", ("batch_norm", "batchnorm")),
    ("relu/threshold", ("relu", "threshold")),
    ("copy/cat", ("cat", "copy", "clone", "contiguous", "_to_copy", "pad", "slice_backward")),
]


def kernel_kind(name: str) -> str:
    """The kind of an op by its profiler name (aten::..., autograd nodes ...Backward0)."""
    low = name.lower()
    for kind, keys in _KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def profile_step(fn: Callable[[], object], label: str) -> dict[str, float]:
    """Profile one call of ``fn`` (warmed up): self CPU ms per kind of kernel; prints the top 25 ops."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    by_kind: dict[str, float] = {kind: 0.0 for kind, _ in _KINDS} | {"other": 0.0}
    for e in events:
        by_kind[kernel_kind(e.key)] += e.self_cpu_time_total / 1e3
    total = sum(by_kind.values())
    print(f"\n== profile: {label}, self CPU time {total:.1f} ms")
    for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:22s} {ms:9.1f} ms  {100 * ms / max(total, 1e-9):5.1f}%")
    print(events.table(sort_by="self_cpu_time_total", row_limit=25))
    return by_kind


# ---- the report -----------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    value: float | None
    target: str  # e.g. ">= 80%" or "<= 1.15"; "" for information only
    ok: bool | None
    percent: bool


def checks(results: dict[str, dict[str, float]], setup: Setup) -> list[Check]:
    out: list[Check] = []
    ideal = setup.ideal

    def get(measure: str, model: str) -> float | None:
        return results.get(measure, {}).get(model)

    def ge(name: str, value: float | None, bound: float, percent: bool) -> None:
        t = f">= {100 * bound:.0f}%" if percent else f">= {bound:.2f}"
        out.append(Check(name, value, t, None if value is None else value >= bound, percent))

    def le(name: str, value: float | None, bound: float) -> None:
        out.append(Check(name, value, f"<= {bound:.2f}", None if value is None else value <= bound, False))

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a / b

    for measure, bound in (("train", 0.80), ("infer32", 0.85), ("infer1", 0.80)):
        sp = ratio(get(measure, "plain"), get(measure, "compact"))
        ge(f"{measure}: compact % of ideal vs plain", None if sp is None else sp / ideal, bound, True)
    for measure, bound in (("ort32", 0.80), ("ort1", 0.75)):
        sp = ratio(get(measure, "oneshot"), get(measure, "compact"))
        ge(f"{measure}: ort compact % of ideal vs ort oneshot", None if sp is None else sp / ideal, bound, True)
    le("train: compact / peer time", ratio(get("train", "compact"), get("train", "peer")), 1.15)
    for measure in ("train", "infer32", "infer1"):
        c, p = get(measure, "compact"), get(measure, "peer")
        per_mac = None if c is None or p is None else (c / setup.macs["compact"]) / (p / setup.macs["peer"])
        out.append(Check(f"{measure}: compact / peer time per multiply-add", per_mac, "", None, False))
    for measure in ("train", "infer32", "infer1"):
        le(f"{measure}: oneshot / plain time", ratio(get(measure, "oneshot"), get(measure, "plain")), 1.05)
    return out


def print_table(results: dict[str, dict[str, float]], layouts: dict[str, dict[str, str]]) -> None:
    print(f"\n{'measure':8s} " + " ".join(f"{m:>16s}" for m in MODELS) + "   (median ms, layout)")
    for measure, row in results.items():
        cells = []
        for m in MODELS:
            cells.append(f"{row[m]:9.2f} {layouts[measure][m]:>6s}" if m in row else f"{'-':>16s}")
        print(f"{measure:8s} " + " ".join(cells))


def print_checks(cs: list[Check]) -> None:
    print()
    for c in cs:
        if c.value is None:  # a measure not run
            continue
        val = f"{100 * c.value:.0f}%" if c.percent else f"{c.value:.2f}"
        verdict = "info" if c.ok is None else ("PASS" if c.ok else "FAIL")
        print(f"  {c.name:50s} {val:>8s}  target {c.target or '-':>8s}  {verdict}")
    judged = [c.ok for c in cs if c.ok is not None]
    if judged:
        print(f"  overall: {'PASS' if all(judged) else 'FAIL'} ({sum(judged)}/{len(judged)} targets met)")


# ---- main -----------------------------------------------------------------------------------------------


# glibc reads these once, at start-up: bench_perf re-runs itself with them (--malloc pinned)
PINNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}


def malloc_pinned() -> bool:
    """Whether this process started with :data:`PINNED_MALLOC` (see the module docstring)."""
    return all(os.environ.get(k) == v for k, v in PINNED_MALLOC.items())


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="paper-random-0.46", choices=CONFIGS)
    ap.add_argument(
        "--measures",
        nargs="+",
        choices=MEASURES,
        default=None,
        help="default: all (none with --profile, which then only profiles)",
    )
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the race (each: every model once)")
    ap.add_argument("--ort-rounds-b1", type=int, default=40, help="onnxruntime rounds at batch 1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--channel-multiple", type=int, nargs="+", default=[8, 16], help="ONNX export option; best kept")
    ap.add_argument("--no-ort", action="store_true", help="skip ort32 and ort1")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="build, count, then one cold NCHW call per measure and model (onnxruntime: the first --channel-multiple)",
    )
    ap.add_argument("--profile", choices=MODELS, help="torch profiler on one training step of this model")
    ap.add_argument(
        "--malloc",
        choices=["pinned", "default"],
        default="pinned",
        help="glibc malloc: thresholds pinned at start-up (the script runs itself again) or glibc's moving ones",
    )
    ap.add_argument("--json", type=Path)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.malloc == "pinned" and not malloc_pinned() and argv is None:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **PINNED_MALLOC})
    pinned = malloc_pinned()
    torch.set_num_threads(args.threads)
    measures = args.measures if args.measures is not None else ([] if args.profile else list(MEASURES))
    if args.no_ort:
        measures = [m for m in measures if not m.startswith("ort")]
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
        f"ONEDNN_PRIMITIVE_CACHE_CAPACITY={os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY']}, "
        f"malloc {'pinned' if pinned else 'default'}, config {args.config}, rounds {args.rounds}"
        + (", smoke" if args.smoke else "")
    )
    t0 = time.perf_counter()
    setup = make_setup(args.config, args.seed)
    spec = setup.one_shot.spec
    channels, size = spec.input.channels, spec.input.size
    print(
        f"rho {setup.rho:.4f}; ideal speedup {setup.info['stats_macs']:,} / {setup.info['stats_macs_live']:,} MACs "
        f"= {setup.ideal:.2f}x; peer C = {setup.peer_c} (closest by parameters: {setup.info['peer_c_closest']}) "
        f"[setup {time.perf_counter() - t0:.0f} s]"
    )
    for name in MODELS:
        print(f"  {name:8s} {setup.params[name]:>12,} parameters {setup.macs[name]:>15,} multiply-adds (flop counter)")

    gen = torch.Generator().manual_seed(args.seed)
    x32 = torch.randn(TRAIN_BATCH, channels, size, size, generator=gen)
    y32 = torch.randint(int(setup.one_shot.size[setup.one_shot.head_group]), (TRAIN_BATCH,), generator=gen)
    x1 = x32[:1].clone()
    inputs = {"train": x32, "infer32": x32, "infer1": x1, "ort32": x32, "ort1": x1}

    ort = (
        OrtModels(setup, args.channel_multiple[:1] if args.smoke else args.channel_multiple, args.threads)
        if any(m.startswith("ort") for m in measures)
        else None
    )
    results: dict[str, dict[str, float]] = {}
    layouts: dict[str, dict[str, str]] = {}
    solo: dict[str, dict[str, dict[str, list[float]]]] = {}
    train_layout: dict[str, str] = {}
    for measure in measures:
        x = inputs[measure]
        names = ["oneshot", "compact"] if measure.startswith("ort") else MODELS
        t_m = time.perf_counter()
        if args.smoke:  # one call per model, NCHW (or the first channel multiple), no warm-up, no race
            results[measure], layouts[measure] = {}, {}
            for name in names:
                v = next(_variants(measure, name, setup, ort, x, y32))
                results[measure][name] = 1e3 * timed(v.fn)
                layouts[measure][name] = v.label
                del v
            print(f"{measure}: " + ", ".join(f"{k} {t:.1f} ms" for k, t in results[measure].items()), flush=True)
            continue
        rounds = args.ort_rounds_b1 if measure == "ort1" else args.rounds
        if measure.startswith("ort"):
            # every export of both models in the race, each model keeping its faster one
            contenders = {(name, v.label): v.fn for name in names for v in _variants(measure, name, setup, ort, x, y32)}
            med = race(contenders, rounds)
            results[measure], layouts[measure] = {}, {}
            for (name, label), t in sorted(med.items(), key=lambda kv: kv[1]):
                if name not in results[measure]:
                    results[measure][name], layouts[measure][name] = 1e3 * t, label
        else:
            chosen: dict[str, Variant] = {}
            solo[measure] = {}
            for name in names:
                chosen[name], solo[measure][name] = choose(_variants(measure, name, setup, ort, x, y32))
            layouts[measure] = {k: v.label for k, v in chosen.items()}
            if measure == "train":
                train_layout = dict(layouts[measure])
            med = race({k: v.fn for k, v in chosen.items()}, rounds)
            results[measure] = {k: 1e3 * t for k, t in med.items()}
            del chosen
        print(
            f"{measure}: "
            + ", ".join(f"{k} {t:.1f} ms ({layouts[measure][k]})" for k, t in results[measure].items())
            + f" [{rounds} rounds, {time.perf_counter() - t_m:.0f} s]",
            flush=True,
        )
    if ort is not None:
        ort.close()

    profile: dict[str, float] | None = None
    if args.profile:
        layout = train_layout.get(args.profile)
        if layout is None:
            v, _ = choose(_variants("train", args.profile, setup, None, x32, y32))
        else:
            v = next(v for v in _variants("train", args.profile, setup, None, x32, y32) if v.label == layout)
        profile = profile_step(v.fn, f"{args.profile} ({v.label}), one training step at batch {TRAIN_BATCH}")

    cs: list[Check] = []
    if results:
        print_table(results, layouts)
        cs = checks(results, setup)
        print(
            f"\nideal speedup {setup.ideal:.2f}x"
            + (" (smoke: single cold calls, not a measurement)" if args.smoke else "")
        )
        print_checks(cs)
    if args.json:
        doc = {
            "config": args.config,
            "torch": torch.__version__,
            "threads": args.threads,
            "env": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")},
            "malloc": "pinned" if pinned else "default",
            "smoke": args.smoke,
            "rounds": args.rounds,
            "ort_rounds_b1": args.ort_rounds_b1,
            "rho": setup.rho,
            "ideal": setup.ideal,
            "peer_channels": setup.peer_c,
            "params": setup.params,
            "macs": setup.macs,
            "stats": setup.info,
            "median_ms": results,
            "layouts": layouts,
            "solo_s": solo,
            "checks": [c.__dict__ for c in cs],
            "profile_ms": profile,
        }
        args.json.write_text(json.dumps(doc, indent=1))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


def _variants(measure: str, name: str, setup: Setup, ort: OrtModels | None, x: Tensor, y: Tensor) -> Iterator[Variant]:
    if measure.startswith("ort"):
        assert ort is not None
        return ort.variants(name, x.numpy())
    return torch_variants(measure, setup.models[name], x, y)


if __name__ == "__main__":
    main()
