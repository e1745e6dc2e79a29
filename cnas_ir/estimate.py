"""The size of a spec's network before anything is allocated: closed-form arithmetic.

A mistyped number (``channels: 1000000``, ``cells_per_stack: 100000``) must get a one-line
answer in well under a second, not a swapped machine. So the counts here come from the
validated spec alone, as sums in closed form: no loop over cells, nodes or layers, which the
spec can make huge. The one loop is over the *stacks* of a NASNet space (a run of cells of one
width each), capped at :data:`MAX_STACKS`: widths double per stack, so 64 stacks already
describe more memory than any machine has, and more stacks are reported as "at least".

What is counted (the same definitions as the IR and the weight table):

- ``vertices``, ``groups``, ``bundles``: the one-shot graph's columns (:mod:`cnas_ir.ir`);
- ``channel_edges``: a dense bundle joins every src channel to every dst channel, the others
  one to one (copies, identities, sums, concatenations);
- ``params``: the weight table's parameters; ``weight_values``: with the BatchNorm running
  statistics;
- ``ir_bytes``: the graph's columns plus the per-vertex columns the passes derive from them
  (vertex group, op of vertex, x cost, x ids), which a search holds;
- ``weight_bytes``: float32 weights in one-shot shapes, as the ``.cnas`` file stores them;
- ``activation_bytes``: what a training step at ``train.batch_size`` and ``input.size`` keeps
  for the backward pass, float32 (see :func:`_activations`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cnas_ir.errors import InputError, shorten
from cnas_ir.ir import Graph
from cnas_ir.spec import DensenetSpec, NasnetSpec, Spec

__all__ = [
    "DEFAULT_MAX_MEMORY",
    "MAX_STACKS",
    "Estimate",
    "check_size",
    "estimate",
    "format_size",
    "TrainingMemory",
    "check_training_memory",
    "largest_contributor",
    "live_fraction",
    "parse_size",
    "training_memory",
]

MAX_STACKS = 64

# Bytes per entry of the IR's columns (cnas_ir.ir): groups kind u8, cell/node/op i16, start and
# size i64, res i32; vertices alive u8, src i32, saliency f32 and the derived vertex_group i32,
# op_of_vertex i32, x_cost i64; x_ids i64 per x vertex; bundles kind u8, src and dst i32.
_GROUP_BYTES = 1 + 3 * 2 + 2 * 8 + 4
_VERTEX_BYTES = 1 + 4 + 4 + 4 + 4 + 8
_X_BYTES = 8
_BUNDLE_BYTES = 1 + 4 + 4


@dataclass(frozen=True)
class Estimate:
    vertices: int
    x_vertices: int
    groups: int
    bundles: int
    channel_edges: int
    params: int
    weight_values: int
    ir_bytes: int
    weight_bytes: int
    activation_bytes: int  # one training step at the spec's batch size and input size
    batch_size: int
    at_least: bool = False  # the spec has more than MAX_STACKS stacks: counted up to there

    @property
    def build_bytes(self) -> int:
        """What ``build`` and a trained artifact hold: the IR and the weights."""
        return self.ir_bytes + self.weight_bytes

    def activation_bytes_at(self, batch_size: int) -> int:
        return self.activation_bytes // self.batch_size * batch_size

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"build_bytes": self.build_bytes}


@dataclass
class _Count:
    vertices: int = 0
    x: int = 0
    groups: int = 0
    bundles: int = 0
    edges: int = 0
    params: int = 0
    buffers: int = 0
    activations: int = 0  # floats per image

    def add(self, n: int = 1, **parts: int) -> None:
        """Add ``n`` copies of a piece whose counts are ``parts``."""
        for k, v in parts.items():
            setattr(self, k, getattr(self, k) + n * v)


def _half(r: int) -> int:
    return (r + 1) // 2


def _nasnet(spec: Spec, p: NasnetSpec, count: _Count) -> bool:
    n_nodes, n_ops, size = p.nodes_per_cell, p.ops_per_node, spec.input.size
    s = p.stem_multiplier * p.channels
    count.add(vertices=spec.input.channels, groups=1)
    # the stem: one conv, or three stride-2 ones in -> ceil(S/2) -> S -> S
    widths = [spec.input.channels, s] if p.stem == "cifar" else [spec.input.channels, (s + 1) // 2, s, s]
    res = size
    for cin, cout in zip(widths, widths[1:], strict=False):
        res = res if p.stem == "cifar" else _half(res)
        count.add(
            vertices=cout, groups=1, bundles=1, edges=cin * cout, params=9 * cin * cout + 2 * cout, buffers=2 * cout
        )
        count.add(activations=3 * cout * res * res)  # conv, BN, ReLU outputs
    # Copies per op summed over a cell's nodes: node k's ops read d_a, d_b, z_1 .. z_{k-1}.
    reads = n_nodes * (n_nodes + 3) // 2  # sum over k of (k + 1) states
    out = n_nodes  # a cell's output is the concat of its z: n_nodes x width channels
    stacks = min(p.stacks, MAX_STACKS)
    # The cells as runs of one width (one run per stack); cell i reads a = c(i-2), b = c(i-1).
    before = [s, s]  # output sizes of the two previous cells (the stem's, ImageNet: S and S)
    for stack in range(stacks):
        w = p.channels * 2**stack
        r_in = res
        res_out = _half(res) if stack > 0 else res
        cells = p.cells_per_stack + (stack > 0)
        for i in range(min(cells, 2)):  # the first two cells of the run read the previous run
            reduction = stack > 0 and i == 0
            _nasnet_cell(count, w, n_nodes, n_ops, reads, before[0], before[1], r_in if i == 0 else res_out,
                         res_out, reduction, 1)  # fmt: skip
            before = [before[1], out * w]
        rest = cells - min(cells, 2)
        if rest:  # the others read cells of their own width
            _nasnet_cell(count, w, n_nodes, n_ops, reads, out * w, out * w, res_out, res_out, False, rest)
        res = res_out
    last = before[1]
    count.add(vertices=spec.classes, groups=1, bundles=1, edges=last * spec.classes)
    count.add(params=last * spec.classes + spec.classes)
    return p.stacks > MAX_STACKS


def _nasnet_cell(
    count: _Count, w: int, nodes: int, ops: int, reads: int, a: int, b: int, r_in: int, r: int, reduction: bool, n: int
) -> None:
    """``n`` cells of width ``w`` whose inputs have ``a`` and ``b`` channels."""
    x = ops * reads * w  # the cell's x vertices: each op copies every channel it may read
    count.add(
        n,
        vertices=a + b + 2 * w + x + ops * nodes * w + nodes * w + nodes * w,
        x=x,
        groups=2 + 2 + nodes * (2 * ops + 1) + 1,
        # a, b identities; d_a, d_b; per op its copies, sepconv, add; the concat of the z
        bundles=2 + 2 + ops * reads + 2 * ops * nodes + nodes,
        edges=a + b + (a + b) * w + x + x * w + ops * nodes * w + nodes * w,
        params=(a + b) * w + x * (w + 9),
        buffers=2 * 2 * w + ops * nodes * 2 * w,
    )
    # Per image, kept for backward: the ReLU'd states (d_a, d_b, z), and per op its gathered
    # input, the depthwise output, the pointwise output and the BatchNorm output; the
    # preprocessing convs and BatchNorms; the node sums and the cell output.
    r_d = r_in if reduction else r
    states = (2 + nodes) * w * r_d * r_d
    per_op = x * r_d * r_d + x * r * r + 2 * ops * nodes * w * r * r
    count.add(n, activations=states + per_op + 2 * 2 * w * r_d * r_d + 2 * nodes * w * r * r)


def _densenet(spec: Spec, p: DensenetSpec, count: _Count) -> None:
    k, layers, bw = p.growth_rate, p.layers_per_block, p.bottleneck_width * p.growth_rate
    res = spec.input.size
    stem = 2 * k
    cin = spec.input.channels
    count.add(vertices=cin + stem, groups=2, bundles=1, edges=cin * stem, params=9 * cin * stem)
    count.add(activations=stem * res * res)
    prev = stem
    for block in range(1, 4):
        b = prev
        if block == 1:
            d = b
            count.add(vertices=b + d, groups=2, bundles=2, edges=b + b)
        else:
            d = int(b * p.compression)
            count.add(vertices=b + d, groups=2, bundles=2, edges=b + b * d, params=b * d + 2 * b, buffers=2 * b)
            count.add(activations=3 * b * res * res + d * res * res)  # BN, ReLU, conv; then the pool
            res = max(res // 2, 1)
        # layer l reads d + (l - 1) k channels: sums over the layers in closed form
        x = layers * d + k * layers * (layers - 1) // 2
        c = d + layers * k
        count.add(
            vertices=x + layers * (bw + k) + c,
            x=x,
            groups=layers * 3 + 1,
            bundles=(layers * (layers + 1) // 2) + 2 * layers + (layers + 1),
            edges=x + x * bw + layers * bw * k + c,
            params=x * bw + 2 * x + layers * (9 * bw * k + 2 * bw),
            buffers=2 * x + layers * 2 * bw,
        )
        # per layer: gathered input, BN, ReLU, conv1, BN, ReLU (x and 4k wide), conv2 (k)
        count.add(activations=(3 * x + 3 * layers * bw + layers * k + c) * res * res)
        prev = c
    count.add(vertices=spec.classes, groups=1, bundles=1, edges=prev * spec.classes)
    count.add(params=prev * spec.classes + 2 * prev + spec.classes, buffers=2 * prev)


def estimate(spec: Spec) -> Estimate:
    """Sizes of ``spec``'s one-shot network, computed without building it (module doc)."""
    count = _Count()
    at_least = False
    if spec.space == "nasnet":
        assert spec.nasnet is not None
        at_least = _nasnet(spec, spec.nasnet, count)
    else:
        assert spec.densenet is not None
        _densenet(spec, spec.densenet, count)
    batch = spec.train.batch_size
    return Estimate(
        vertices=count.vertices,
        x_vertices=count.x,
        groups=count.groups,
        bundles=count.bundles,
        channel_edges=count.edges,
        params=count.params,
        weight_values=count.params + count.buffers,
        ir_bytes=count.vertices * _VERTEX_BYTES
        + count.x * _X_BYTES
        + count.groups * _GROUP_BYTES
        + count.bundles * _BUNDLE_BYTES,
        weight_bytes=4 * (count.params + count.buffers),
        activation_bytes=4 * count.activations * batch,
        batch_size=batch,
        at_least=at_least,
    )


# The keys that size a network, per space: the candidates for "the key that contributes most".
_SIZE_KEYS = {
    "nasnet": ("channels", "stacks", "cells_per_stack", "nodes_per_cell", "ops_per_node", "stem_multiplier"),
    "densenet": ("growth_rate", "depth", "bottleneck_width"),
}


def largest_contributor(spec: Spec, measure: str = "build_bytes") -> str:
    """The spec key whose value grows ``measure`` the most: the ratio of the estimate to the
    estimate with that key at its default (or the input's size and classes at theirs)."""
    base = getattr(estimate(spec), measure)
    section = getattr(spec, spec.space)
    defaults = type(section)()
    best, best_ratio = f"{spec.space}.channels", 0.0
    candidates: list[tuple[str, Spec]] = []
    for key in _SIZE_KEYS[spec.space]:
        small = min(getattr(section, key), getattr(defaults, key))
        candidates.append((f"{spec.space}.{key}", _with(spec, spec.space, section, key, small)))
    for field, small in (("size", 32), ("channels", 3)):
        candidates.append(
            (f"input.{field}", _with(spec, "input", spec.input, field, min(getattr(spec.input, field), small)))
        )
    candidates.append(("classes", spec.model_copy(update={"classes": min(spec.classes, 10)})))
    if measure == "activation_bytes":
        candidates.append(("train.batch_size", _with(spec, "train", spec.train, "batch_size", 1)))
    for key, other in candidates:
        smaller = getattr(estimate(other), measure)
        ratio = base / max(smaller, 1)
        if ratio > best_ratio:
            best, best_ratio = key, ratio
    return best


def _with(spec: Spec, section_name: str, section: Any, key: str, value: Any) -> Spec:
    """``spec`` with one key of one section replaced (frozen models; validation not re-run)."""
    return spec.model_copy(update={section_name: section.model_copy(update={key: value})})


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """``8G``, ``500M``, ``1.5T``, ``4096`` (bytes; binary units, an optional trailing B)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] else ""
    number = t[: len(t) - len(unit)]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (expected e.g. 8G, 500M, 4096)") from None
    size = value * _UNITS[unit]
    if not math.isfinite(size) or size <= 0:  # 1e300T overflows to inf
        raise ValueError(f"not a size: {text!r} (expected a positive number, e.g. 8G)")
    return int(size)


def format_size(n: float) -> str:
    """Bytes in binary units, three significant digits: ``4.00 GiB``, ``226 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


DEFAULT_MAX_MEMORY = 4 * 2**30  # IR + weights that `build` accepts without --max-memory


def key_value(spec: Spec, key: str) -> Any:
    value: Any = spec
    for part in key.split("."):
        value = getattr(value, part)
    return value


# The IR numbers cells, nodes and ops in int16 columns (cnas_ir.ir).
MAX_INDEX = 2**15 - 1


def _indices(spec: Spec) -> list[tuple[str, int, str]]:
    """(key, largest number, what it numbers) of the IR's int16 columns, from the spec."""
    if spec.space == "densenet":
        assert spec.densenet is not None
        return [("densenet.depth", spec.densenet.layers_per_block, "layers per dense block")]
    p = spec.nasnet
    assert p is not None
    cells = p.stacks * (p.cells_per_stack + 1) - 1
    many = "nasnet.stacks" if p.stacks > p.cells_per_stack else "nasnet.cells_per_stack"
    return [(many, cells, "cells"), ("nasnet.nodes_per_cell", p.nodes_per_cell, "nodes per cell"),
            ("nasnet.ops_per_node", p.ops_per_node, "operations per node")]  # fmt: skip


def check_size(spec: Spec, max_memory: int | None = None, source: str | None = None) -> Estimate:
    """The estimate of ``spec``; a one-line :class:`InputError` naming the key that contributes
    most when the IR and the weights would exceed ``max_memory`` (default 4 GiB), or the key
    that numbers more cells, nodes or ops than the IR's int16 columns hold."""
    limit = DEFAULT_MAX_MEMORY if max_memory is None else max_memory
    e = estimate(spec)
    if e.build_bytes > limit:
        key = largest_contributor(spec)
        at_least = "at least " if e.at_least else ""
        raise InputError(
            f"{source or spec.name}: {key} = {shorten(repr(key_value(spec, key)))} makes the one-shot graph too large: "
            f"IR + weights {at_least}{format_size(e.build_bytes)} > the {format_size(limit)} limit "
            "(--max-memory / max_memory= moves it)"
        )
    for key, n, what in _indices(spec):
        if n > MAX_INDEX:
            raise InputError(
                f"{source or spec.name}: {key} = {key_value(spec, key)} makes {n:,} {what}; "
                f"the IR numbers at most {MAX_INDEX:,}"
            )
    return e


def live_fraction(graph: Graph) -> float:
    """The share of the one-shot network's activations a (pruned) ``graph`` still computes: its
    live vertices weighted by the pixels each carries (res^2), over all of them."""
    pixels = graph.res.astype(np.float64)[graph.vertex_group] ** 2
    return float(pixels[graph.alive.astype(bool)].sum() / max(pixels.sum(), 1.0))


# A training step also holds the weights, their gradients and SGD's momentum buffer.
_WEIGHT_COPIES = 3


@dataclass(frozen=True)
class TrainingMemory:
    """What one training step of a process needs, and the largest global batch that fits."""

    need: int  # bytes on the device, all of this node's processes together
    per_image: float  # activation bytes of one image
    fixed: int  # bytes per process that do not depend on the batch (weights, gradients, momentum)
    largest_batch: int  # the largest global batch_size whose need fits ``available`` (0: none)


def training_memory(
    spec: Spec, available: int, *, fraction: float = 1.0, world: int = 1, processes: int = 1
) -> TrainingMemory:
    """The memory of one training step at ``spec.train.batch_size``, split over ``world``
    processes of which ``processes`` share this device (CPU processes of one node share its
    memory; each GPU is its own), for a network computing ``fraction`` of the one-shot
    network's activations (:func:`live_fraction`)."""
    e = estimate(spec)
    per_image = e.activation_bytes / e.batch_size * fraction
    fixed = int(_WEIGHT_COPIES * e.weight_bytes * fraction)
    per_process = -(-e.batch_size // world)
    need = processes * int(fixed + per_image * per_process)
    fits = (available / processes - fixed) / max(per_image, 1.0)
    return TrainingMemory(need, per_image, fixed, max(0, int(fits)) * world)


def check_training_memory(
    spec: Spec, available: int, where: str, *, fraction: float = 1.0, world: int = 1, processes: int = 1
) -> TrainingMemory:
    """:func:`training_memory`, refused in one line (naming ``train.batch_size``, the need, what
    is ``available`` on the device ``where`` and the largest batch that fits) when it does not fit."""
    m = training_memory(spec, available, fraction=fraction, world=world, processes=processes)
    if m.need > available:
        procs = f" over {processes} processes" if processes > 1 else ""
        fit = (
            f"the largest batch that fits is {m.largest_batch}" if m.largest_batch > 0 else "not even a batch of 1 fits"
        )
        raise InputError(
            f"{spec.name}: train.batch_size = {spec.train.batch_size} needs about {format_size(m.need)} for a "
            f"training step{procs}, and {where} has {format_size(available)} available: {fit} "
            "(change train.batch_size, or --force to try anyway)"
        )
    return m
