"""Export a channel graph to ONNX for deployment, and check it against PyTorch (SPEC §5).

:func:`export` folds the graph (:func:`cnas_ir.passes.fold.fold`), emits the compact eval-mode
network straight from the IR and its weights (:func:`cnas_ir.backends.onnx.emit.emit_model`:
BatchNorm folded, a node's ops merged into one pointwise conv, ReLU once per state, one gather
per node, no dead initializers), optionally checks it (:func:`check_onnx`), and writes it
atomically: the file appears whole or not at all.

The model's metadata (``metadata_props``) carries what evaluating it needs
(:mod:`cnas_ir.backends.onnx.evaluate`, ``cnas-ir eval MODEL.onnx``): ``cnas-ir.spec``, the whole
validated spec as canonical JSON (data set, input, classes), and ``cnas-ir.data``, the graph's
``Graph.data`` as JSON (data set name, per-channel normalisation mean and std, class names).

The check is ``onnx.checker.check_model(full_check=True)`` followed by onnxruntime (CUDA where
a GPU is usable, else CPU) against the PyTorch compact module
(``lower(graph, "compact").eval()``) on random inputs at batch 1 and 7, with
``|onnx - torch| <= atol + rtol * |torch|`` on every logit. A model that fails the check is
not written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from cnas_ir import __version__
from cnas_ir.backends.onnx.emit import INPUT_NAME, EmitStats, emit_model
from cnas_ir.errors import InputError, RunFailure
from cnas_ir.format import atomic_write
from cnas_ir.ir import Graph, VerifyError
from cnas_ir.passes.fold import fold
from cnas_ir.passes.stats import compute_stats
from cnas_ir.weights import weight_table

__all__ = [
    "META_DATA",
    "META_PRODUCER",
    "META_SPEC",
    "MIN_OPSET",
    "CheckReport",
    "ExportReport",
    "check_onnx",
    "export",
    "initial_weights",
    "session",
]

META_SPEC = "cnas-ir.spec"  # metadata_props keys (module docstring)
META_DATA = "cnas-ir.data"
META_PRODUCER = "cnas-ir.producer"
MIN_OPSET = 17
RTOL = 1e-4
ATOL = 1e-5


@dataclass(frozen=True)
class CheckReport:
    """onnxruntime vs PyTorch on random inputs: the largest differences over all batches.

    ``max_rel_diff`` is ``max |onnx - torch| / |torch|`` over logits with ``torch != 0``.
    """

    provider: str
    batches: tuple[int, ...]
    max_abs_diff: float
    max_rel_diff: float
    rtol: float
    atol: float
    passed: bool


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export` wrote.

    ``float_params``: float32 values in the initializers -- the network's parameters after
    the inference rewrites; ``params_live``: ``compute_stats(fold(graph)).model_params_live``;
    ``index_values``: int64 values in the initializers (gather indices, slice bounds, shapes:
    not parameters). The two parameter counts differ by exactly:

    - plus one bias per output channel of each conv a BN was folded into (NASNet: the stem,
      every emitted d_a/d_b, every live node's merged PW conv -- C per node, the J ops' biases
      being summed; DenseNet: each live bottleneck's conv1, 4k);
    - minus the affine BN parameters that fold away (NASNet stem BN, DenseNet BN2: 2 per
      channel); pre-activation BNs become a Mul + Add of the same size as gamma/beta;
    - minus the parameters of preprocessing that no live x reads (NASNet d_a/d_b and, if that
      leaves a cell output unread, that cell): the IR keeps preprocessing, dead-code
      elimination drops it (``dead_nodes`` counts the nodes and initializers removed).

    ``convs_stacked``: convs merged into a sibling conv of the same input (NASNet: a cell's
    d_b and the next cell's d_a run as one conv and a Split); the parameters are the same.
    """

    path: str
    opset: int
    channel_multiple: int
    bytes: int
    seconds: float
    nodes: int
    op_types: dict[str, int]
    initializers: int
    float_params: int
    index_values: int
    params_live: int
    bn_folded: int
    bn_affine: int
    nodes_merged: int
    ops_merged: int
    gathers: dict[str, int]
    dead_nodes: int
    convs_stacked: int
    untrained: bool
    check: CheckReport | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for the command line."""
        s = (
            f"wrote {self.path} ({self.bytes / 1e6:.1f} MB, opset {self.opset}): {self.nodes} nodes, "
            f"{self.float_params:,} parameters ({self.params_live:,} live in the IR, BN folded), "
            f"{self.seconds:.1f} s"
        )
        if self.untrained:
            s += "; UNTRAINED initialisation"
        if self.check is not None:
            c = self.check
            s += (
                f"; check passed on {c.provider} (batches {', '.join(map(str, c.batches))}): "
                f"max abs diff {c.max_abs_diff:.2e}, max rel diff {c.max_rel_diff:.2e}"
            )
        return s


# ---- weights --------------------------------------------------------------------------------


def initial_weights(graph: Graph, seed: int = 0) -> Graph:
    """``graph`` with the PyTorch lowering's deterministic initialisation as its weights."""
    import torch

    from cnas_ir.backends.pytorch import lower, to_graph

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = lower(graph, "compact", weights=False)
    return to_graph(graph, module)


def _require_weights(graph: Graph, allow_untrained: bool, seed: int) -> tuple[Graph, bool]:
    if not graph.weights:
        if not allow_untrained:
            raise InputError(
                f"graph {graph.spec.name!r} has no trained weights; "
                "train it first or pass --allow-untrained (allow_untrained=True) to export the initialisation"
            )
        return initial_weights(graph, seed), True
    table = weight_table(graph)
    missing = [name for name in table if name not in graph.weights]
    if missing:
        raise InputError(f"graph {graph.spec.name!r} lacks weight {missing[0]!r} (and {len(missing) - 1} more)")
    for name, info in table.items():
        if tuple(graph.weights[name].shape) != info.shape:
            raise InputError(
                f"graph weight {name!r} has shape {tuple(graph.weights[name].shape)}, expected {info.shape}"
            )
    return graph, False


# ---- check ----------------------------------------------------------------------------------


def session(model: bytes, device: str = "auto") -> tuple[Any, str]:
    """An onnxruntime session and the provider it runs on: ``auto`` CUDA when a GPU is usable,
    else CPU; ``cpu``; ``cuda`` (an :class:`InputError` when onnxruntime cannot use one)."""
    import onnxruntime as ort

    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device {device!r}: expected auto, cpu or cuda")
    cuda = device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers() and _cuda_usable()
    if device == "cuda" and not cuda:
        raise InputError(f"--device cuda: this onnxruntime {ort.__version__} has no usable CUDA provider here")
    providers: list[Any] = ["CPUExecutionProvider"]
    if cuda:
        # TF32 would round conv inputs to 10 mantissa bits: far outside rtol 1e-4.
        providers.insert(0, ("CUDAExecutionProvider", {"use_tf32": "0"}))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the CUDA fallback logs errors we handle by reporting the provider
    # A check runs a handful of batches: idle worker threads should sleep, not spin.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model, sess_options=options, providers=providers)
    return sess, sess.get_providers()[0]


def _cuda_usable() -> bool:
    # onnxruntime-gpu lists CUDAExecutionProvider even on machines without a GPU and then logs
    # a load failure; ask torch (already imported for the reference) whether a GPU is there.
    import torch

    return bool(torch.cuda.is_available())


def check_onnx(
    model: onnx.ModelProto | bytes,
    graph: Graph,
    *,
    batches: Sequence[int] = (1, 7),
    rtol: float = RTOL,
    atol: float = ATOL,
    seed: int = 0,
) -> CheckReport:
    """Full ONNX check, then onnxruntime vs ``lower(graph, "compact").eval()`` on random inputs.

    ``graph`` must carry the weights the model was exported from. Inputs are standard-normal
    float32 (n, C_in, H, W) for each n in ``batches``. Raises :class:`RunFailure` when the
    checker rejects the model; a numeric mismatch is reported (``passed`` False), not raised.
    """
    import torch

    from cnas_ir.backends.pytorch import lower

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(model)
    data = model if isinstance(model, bytes) else model.SerializeToString()
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunFailure(f"the exported ONNX model fails onnx.checker: {first}") from None
    spec = graph.spec
    rng = np.random.default_rng(seed)
    xs = [
        rng.standard_normal((n, spec.input.channels, spec.input.size, spec.input.size), dtype=np.float32)
        for n in batches
    ]
    # All PyTorch runs first, then all onnxruntime runs: the two thread pools never compete.
    module = lower(graph, "compact").eval()
    with torch.no_grad():
        refs = [module(torch.from_numpy(x)).numpy().astype(np.float64) for x in xs]
    del module
    sess, provider = session(data)
    max_abs = max_rel = 0.0
    passed = True
    for x, ref in zip(xs, refs, strict=True):
        out = np.asarray(sess.run(None, {INPUT_NAME: x})[0], np.float64)
        if out.shape != ref.shape:
            raise RunFailure(f"the ONNX model gives logits of shape {out.shape}, PyTorch {ref.shape}")
        diff = np.abs(out - ref)
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
        nz = ref != 0
        if nz.any():
            max_rel = max(max_rel, float((diff[nz] / np.abs(ref[nz])).max()))
        passed &= bool(np.all(diff <= atol + rtol * np.abs(ref)))
    return CheckReport(provider, tuple(int(b) for b in batches), max_abs, max_rel, rtol, atol, passed)


# ---- export ---------------------------------------------------------------------------------


def _check_writable(path: Path) -> None:
    # Fail before the (possibly long) export; atomic_write still guards the write itself.
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise RunFailure(f"{path}: cannot write (is a folder)")
    if not parent.is_dir():
        raise RunFailure(f"{path}: cannot write (folder {parent} does not exist)")
    if not os.access(parent, os.W_OK):
        raise RunFailure(f"{path}: cannot write (permission denied)")


def export(
    graph: Graph,
    path: str | Path,
    *,
    check: bool = False,
    allow_untrained: bool = False,
    opset: int = MIN_OPSET,
    channel_multiple: int = 16,
    seed: int = 0,
    batches: Sequence[int] = (1, 7),
    rtol: float = RTOL,
    atol: float = ATOL,
) -> ExportReport:
    """Write the compact eval-mode network of ``graph`` to ``path`` as an ONNX model.

    Input ``input`` float32 (N, C_in, H, W) with a dynamic batch N; output ``logits`` float32
    (N, classes). Weights are embedded. ``graph`` is folded first; it must carry weights
    (:class:`InputError` otherwise) unless ``allow_untrained``, which exports the PyTorch
    lowering's initialisation drawn with ``seed``. ``check`` runs :func:`check_onnx` (inputs
    drawn with ``seed``) before writing and raises :class:`RunFailure` if the model does not
    match PyTorch within ``rtol``/``atol``; nothing is written then. An unwritable ``path``
    raises :class:`RunFailure` and leaves no file. ``channel_multiple`` pads merged depthwise
    inputs with zero channels made in the graph, for onnxruntime's blocked CPU kernels (see
    :func:`~cnas_ir.backends.onnx.emit.emit_model`; 1 turns it off); the file's initializers
    hold only live parameters either way.
    """
    t0 = time.perf_counter()
    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= max_opset:
        raise InputError(f"opset must be between {MIN_OPSET} and {max_opset}, got {opset}")
    if channel_multiple < 1:
        raise InputError(f"channel_multiple must be at least 1, got {channel_multiple}")
    path = Path(path)
    _check_writable(path)
    try:
        graph.verify()
    except VerifyError as e:
        raise InputError(f"graph {graph.spec.name!r} is not valid: {e}") from None
    g = fold(graph)
    g, untrained = _require_weights(g, allow_untrained, seed)
    doc = f"cnas-ir export of {graph.spec.name!r} ({graph.spec.space}), compact eval-mode network"
    model, stats = emit_model(g, opset=opset, channel_multiple=channel_multiple, doc=doc)
    onnx.helper.set_model_props(
        model,
        {
            META_SPEC: graph.spec.to_json(),
            META_DATA: json.dumps(g.data, sort_keys=True),
            META_PRODUCER: f"cnas-ir {__version__}",
        },
    )
    data = model.SerializeToString()
    report = check_onnx(model, g, batches=batches, rtol=rtol, atol=atol, seed=seed) if check else None
    if report is not None and not report.passed:
        raise RunFailure(
            f"the ONNX model does not match PyTorch on {report.provider}: max abs diff {report.max_abs_diff:.3g}, "
            f"max rel diff {report.max_rel_diff:.3g} (rtol {rtol:g}, atol {atol:g}); nothing written"
        )
    atomic_write(path, data)
    seconds = time.perf_counter() - t0
    return _report(path, model, stats, g, untrained, report, len(data), opset, channel_multiple, seconds)


def _report(
    path: Path,
    model: onnx.ModelProto,
    stats: EmitStats,
    g: Graph,
    untrained: bool,
    check: CheckReport | None,
    size: int,
    opset: int,
    channel_multiple: int,
    seconds: float,
) -> ExportReport:
    op_types: dict[str, int] = {}
    for node in model.graph.node:
        op_types[node.op_type] = op_types.get(node.op_type, 0) + 1
    floats = ints = 0
    for t in model.graph.initializer:
        n = int(np.prod(t.dims, dtype=np.int64))
        if t.data_type == onnx.TensorProto.FLOAT:
            floats += n
        else:
            ints += n
    return ExportReport(
        path=str(path),
        opset=opset,
        channel_multiple=channel_multiple,
        bytes=size,
        seconds=seconds,
        nodes=len(model.graph.node),
        op_types=dict(sorted(op_types.items())),
        initializers=len(model.graph.initializer),
        float_params=floats,
        index_values=ints,
        params_live=compute_stats(g).model_params_live,
        bn_folded=stats.bn_folded,
        bn_affine=stats.bn_affine,
        nodes_merged=stats.nodes_merged,
        ops_merged=stats.ops_merged,
        gathers=dict(stats.gathers),
        dead_nodes=stats.dead_nodes,
        convs_stacked=stats.convs_stacked,
        untrained=untrained,
        check=check,
    )
