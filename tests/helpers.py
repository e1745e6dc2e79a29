"""Paths and small builders shared by the tests."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
EXAMPLES = ROOT / "examples"

# The smallest NASNet that trains on synthetic 8x8 data in seconds (training, resume and
# distributed tests).
TINY_SYNTHETIC = {
    "name": "tiny-train",
    "space": "nasnet",
    "input": {"channels": 1, "size": 8},
    "classes": 4,
    "nasnet": {"channels": 4, "stacks": 2, "cells_per_stack": 1, "nodes_per_cell": 2, "ops_per_node": 2,
               "stem_multiplier": 2, "spatial_dropout": 0.1},
    "data": {"name": "synthetic", "seed": 0},
    "train": {"epochs": 3, "batch_size": 64, "lr": 0.05, "t0": 2, "t_mul": 2, "seed": 0},
}  # fmt: skip


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    """Run the body with ``folder`` as the current directory."""
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def run_cli(args: Sequence[object], cwd: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The CLI in-process in ``cwd``: (exit code, stdout, stderr)."""
    from cnas_ir.app.cli import main

    with inside(cwd):
        code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err
