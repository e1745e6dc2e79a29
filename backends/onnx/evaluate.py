"""Evaluate an exported ONNX model in onnxruntime on its data set (``cnas-ir eval MODEL.onnx``).

The model carries what the evaluation needs in its metadata (written by
:func:`cnas_ir.backends.onnx.export.export`): the validated spec, whose ``data`` section names
the data set, and the trained graph's data record (normalisation, class names). The split is
loaded exactly as ``cnas-ir eval ARTIFACT`` loads it (:func:`load_dataset` with the stored
normalisation; a relative data path is taken from the current folder, as in a spec), run
through onnxruntime in batches, and reported as loss, accuracy and count.

Only self-contained models are read: a tensor stored in an external data file is refused, so
a model cannot make onnxruntime open files beside it. A model exported before the metadata
existed is refused with a one-line error saying so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from cnas_ir.backends.onnx.export import META_DATA, META_SPEC, session
from cnas_ir.errors import InputError, reading
from cnas_ir.spec import Spec, parse_spec

__all__ = ["ExportedModel", "evaluate_onnx", "onnx_logits"]

_EVAL_BATCH = 512


@dataclass(frozen=True)
class ExportedModel:
    """An exported model read back: its bytes, the spec and the data record of its metadata."""

    path: Path
    model: bytes
    spec: Spec
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | Path) -> ExportedModel:
        """Read and check ``path``; every failure is a one-line :class:`InputError`."""
        path = Path(path)
        with reading(path, "ONNX model"):
            raw = path.read_bytes()
        try:
            proto = onnx.load_from_string(raw)
        except Exception as e:  # protobuf's DecodeError and friends
            raise InputError(f"{path}: not an ONNX model ({e.__class__.__name__})") from None
        if not proto.graph.node and not proto.graph.output:
            raise InputError(f"{path}: not an ONNX model (no graph)")
        external = next((t.name for t in _tensors(proto.graph) if _is_external(t)), None)
        if external is not None:
            raise InputError(
                f"{path}: tensor {external!r} lives in an external data file; only self-contained models are evaluated"
            )
        props = {p.key: p.value for p in proto.metadata_props}
        if META_SPEC not in props:
            raise InputError(
                f"{path}: no cnas-ir metadata (exported by an earlier cnas-ir, or not by cnas-ir); "
                f"export the artifact again with `cnas-ir export --onnx`"
            )
        try:
            spec_data = json.loads(props[META_SPEC])
            data = json.loads(props.get(META_DATA, "{}"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # protobuf hands over a non-UTF-8 string as bytes
            raise InputError(f"{path}: damaged cnas-ir metadata (bad JSON: {e})") from None
        spec = parse_spec(spec_data, f"{path}:{META_SPEC}")
        if not isinstance(data, dict):
            raise InputError(f"{path}: damaged cnas-ir metadata ({META_DATA} is not a mapping)")
        return cls(path, raw, spec, data)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of ``graph``: initializers, Constant values and those of subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else e.__class__.__name__


def _is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) > 0


def onnx_logits(
    model: ExportedModel,
    split: str = "test",
    *,
    data: str | None = None,
    device: str = "auto",
    workers: int | None = None,
    batch_size: int = _EVAL_BATCH,
) -> tuple[str, str, Iterator[tuple[np.ndarray, np.ndarray]]]:
    """The data set's name, the onnxruntime provider, and per batch of ``split`` the model's
    logits (float32 [n, classes]) with the labels (int64 [n]). ``data`` is ``--data``'s
    ``NAME[:PATH]`` (default: the spec's data set)."""
    from cnas_ir.backends.pytorch.data import load_dataset, parse_data_option
    from cnas_ir.backends.pytorch.train import eval_batches

    name, path = parse_data_option(data) if data is not None else (None, None)
    try:
        sess, provider = session(model.model, device)  # a bad --device before any data is read
    except InputError:
        raise
    except Exception as e:  # onnxruntime's InvalidGraph, Fail, ...: a model it cannot run
        raise InputError(f"{model.path}: onnxruntime cannot load the model ({_first_line(e)})") from None
    info = model.data
    splits = load_dataset(model.spec, name, path, stats=info, classes=info.get("classes"), workers=workers)
    chosen = splits.split(split)
    input_name = sess.get_inputs()[0].name

    def run() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for x, y in eval_batches(chosen, batch_size=batch_size):
            try:
                logits = sess.run(None, {input_name: np.ascontiguousarray(x.numpy(), dtype=np.float32)})[0]
            except Exception as e:  # e.g. a model whose input does not fit the spec in its metadata
                raise InputError(f"{model.path}: onnxruntime failed on the data ({_first_line(e)})") from None
            yield np.asarray(logits), y.numpy()

    return splits.name, provider, run()


def evaluate_onnx(
    path: str | Path,
    split: str = "test",
    *,
    data: str | None = None,
    device: str = "auto",
    workers: int | None = None,
    batch_size: int = _EVAL_BATCH,
) -> tuple[str, dict[str, float], str]:
    """(data set name, {"loss", "accuracy", "n"}, onnxruntime provider) of the exported model at
    ``path`` on ``split``: mean cross-entropy and top-1 accuracy, as ``cnas-ir eval`` reports
    them for an artifact."""
    model = ExportedModel.read(path)
    name, provider, batches = onnx_logits(
        model, split, data=data, device=device, workers=workers, batch_size=batch_size
    )
    loss = 0.0
    correct = n = 0
    for logits, labels in batches:
        z = logits.astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss -= float(log_p[np.arange(len(labels)), labels].sum())
        correct += int((logits.argmax(1) == labels).sum())
        n += len(labels)
    return name, {"loss": loss / max(n, 1), "accuracy": correct / max(n, 1), "n": n}, provider
