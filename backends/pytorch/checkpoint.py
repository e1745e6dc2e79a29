"""Training checkpoints: safetensors files in the run directory's ``checkpoints/``, written
atomically after every epoch, read back without pickle; a fingerprint of the starting graph,
data and settings decides whether ``--resume`` may continue one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from cnas_ir.errors import InputError, RunFailure
from cnas_ir.format import atomic_write
from cnas_ir.ir import BUNDLE_COLUMNS, GROUP_COLUMNS, VERTEX_COLUMNS, Graph
from cnas_ir.rundir import RunDir

from .data import Augment

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "checkpoint_path",
    "run_fingerprint",
    "load_checkpoint",
    "resumable",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "cnas-ir-checkpoint"
CHECKPOINT_VERSION = 1


def run_fingerprint(graph: Graph, data: str, augment: Augment, reinit: bool, seed: int) -> str:
    """What a checkpoint must have started from to be resumed: structure, spec, starting
    weights and settings (not the epoch count: a run may be extended)."""
    h = hashlib.sha256()
    h.update(graph.spec.to_json().encode())
    for name in GROUP_COLUMNS + VERTEX_COLUMNS + BUNDLE_COLUMNS:
        h.update(name.encode())
        h.update(np.ascontiguousarray(getattr(graph, name)).tobytes())
    if not reinit:
        for name in sorted(graph.weights):
            h.update(name.encode())
            h.update(np.ascontiguousarray(graph.weights[name]).tobytes())
    h.update(json.dumps([data, repr(augment), reinit, seed]).encode())
    return h.hexdigest()


def checkpoint_path(run: RunDir, name: str) -> Path:
    return run.checkpoints / f"{name}.safetensors"


def save_checkpoint(
    path: Path, module: torch.nn.Module, opt: torch.optim.Optimizer, epoch: int, epochs: int, fingerprint: str
) -> None:
    tensors: dict[str, torch.Tensor] = {
        f"module.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()
    }
    for i, state in opt.state_dict()["state"].items():
        buf = state.get("momentum_buffer")
        if buf is not None:
            tensors[f"optim.{i}.momentum_buffer"] = buf.detach().cpu().contiguous()
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": str(CHECKPOINT_VERSION),
        "fingerprint": fingerprint,
        "epoch": str(epoch),
        "epochs": str(epochs),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFailure(f"{path.parent}: cannot create the checkpoint folder ({e.strerror or e})") from None
    atomic_write(path, st_save(tensors, metadata=meta))


def resumable(path: Path, fingerprint: str, epochs: int) -> bool:
    """Whether ``path`` is a checkpoint of this very run that ``epochs`` can continue."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return False
    return (
        meta.get("format") == CHECKPOINT_FORMAT
        and meta.get("version") == str(CHECKPOINT_VERSION)
        and meta.get("fingerprint") == fingerprint
        and int(meta.get("epoch", "0")) <= epochs
    )


def load_checkpoint(path: Path, module: torch.nn.Module, opt: torch.optim.Optimizer, fingerprint: str) -> int:
    """Restore module and optimizer state from ``path``; returns the completed epoch count."""
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint to resume (run `cnas-ir train` without --resume)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 -- safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{path}: corrupt checkpoint ({e})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a cnas-ir training checkpoint")
    if meta.get("version") != str(CHECKPOINT_VERSION):
        raise InputError(f"{path}: checkpoint version {meta.get('version')!r}, this cnas-ir reads {CHECKPOINT_VERSION}")
    if meta.get("fingerprint") != fingerprint:
        raise InputError(
            f"{path}: checkpoint is of another graph, spec, dataset or seed than this run "
            f"(start without --resume to train from scratch)"
        )
    state = {k.removeprefix("module."): v for k, v in tensors.items() if k.startswith("module.")}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"{path}: checkpoint does not fit the module ({str(e).splitlines()[0]})") from None
    sd = opt.state_dict()
    sd["state"] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, key = k.split(".", 2)
            sd["state"].setdefault(int(i), {})[key] = v
    opt.load_state_dict(sd)
    return int(meta.get("epoch", "0"))
