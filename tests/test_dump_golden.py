"""Golden text dumps of hand-sized graphs.

The golden files were generated once and then checked by hand against SPEC §1 (group sizes,
resolutions, which cell is a reduction cell, where the factorized reduce sits, the sources
of every x group). Regenerate after a deliberate format change with CNAS_UPDATE_GOLDEN=1 and
review the diff before committing it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import cnas_ir
from cnas_ir.dump import dump
from cnas_ir.format import load, save
from helpers import EXAMPLES

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")

SMALL = {
    "name": "golden",
    "input": {"channels": 1, "size": 4},
    "classes": 3,
    "nasnet": {"channels": 2, "stacks": 2, "cells_per_stack": 1, "nodes_per_cell": 2, "ops_per_node": 1,
               "stem_multiplier": 1},
}  # fmt: skip


def _pruned(g):
    """Cell 1, node 1's op loses x 0 and 2; every x of cell 3 gets a saliency k/10."""
    alive = g.alive.copy()
    x = g.cell_by_index(1).nodes[0].ops[0].x
    alive[g.start[x] + np.array([0, 2])] = False
    sal = g.saliency.copy()
    for op in g.cell_by_index(3).ops:
        sl = g.group_slice(op.x)
        sal[sl] = np.arange(sl.stop - sl.start, dtype=np.float32) / 10
    return g.replace(alive=alive, saliency=sal).with_event({"pass": "hand-prune"})


CASES = {
    "small_one_shot": lambda: cnas_ir.build(SMALL),
    "small_pruned": lambda: _pruned(cnas_ir.build(SMALL)),
    "tiny_example": lambda: cnas_ir.build(EXAMPLES / "tiny.yaml"),
    "densenet_small": lambda: cnas_ir.build(
        {
            "name": "dg",
            "space": "densenet",
            "input": {"channels": 1, "size": 4},
            "classes": 2,
            "densenet": {"growth_rate": 2, "depth": 10},
        }  # fmt: skip
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_dump(case, tmp_path):
    graph = CASES[case]()
    text = dump(graph)
    path = os.path.join(GOLDEN, f"{case}.dump")
    if os.environ.get("CNAS_UPDATE_GOLDEN"):
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        assert text == f.read()
    # the file format round-trips to the same text
    save(graph, tmp_path / "g.cnas")
    assert dump(load(tmp_path / "g.cnas")) == text
