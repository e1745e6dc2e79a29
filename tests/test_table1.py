"""The one-shot columns of the paper's Table 1, and parameter counts against closed forms.

Expected numbers come from the paper (tests/data/table1.json is a copy of the paper's Table 1)
and from formulas written here independently of the IR and its cost table.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

import cnas_ir
from cnas_ir.passes.stats import compute_stats
from cnas_ir.spec import parse_spec
from helpers import DATA, ROOT

TABLE1 = json.loads((DATA / "table1.json").read_text())


def test_paper_config_reproduces_table1_one_shot_columns(paper_graph):
    stats = compute_stats(paper_graph)
    by_index = {c.index: c for c in stats.cells}
    assert len(stats.cells) == 20
    for row in TABLE1["cells"]:
        got = by_index[row["index"]]
        assert (got.x, got.y, got.params) == (row["x"], row["y"], row["params"]), row["index"]
    for c in stats.cells:  # every cell, not just the eight the paper prints
        width = {1: 36, 2: 72, 3: 144}[1 + (c.index >= 7) + (c.index >= 14)]
        assert c.width == width
        assert c.x == {36: 1440, 72: 2880, 144: 5760}[width]
        assert c.y == c.x // 4
        assert c.kind == ("reduction" if c.index in (7, 14) else "normal")
    assert stats.total.x == TABLE1["total"]["x"] == 69_120
    assert stats.total.y == TABLE1["total"]["y"] == 17_280
    assert stats.total.params == TABLE1["total"]["params"] == 9_880_704
    assert stats.rho == 1.0


def test_paper_yaml_example_is_the_paper_config():
    stats = compute_stats(cnas_ir.build(ROOT / "examples" / "nasnet.yaml"))
    assert stats.total.params == 9_880_704
    assert [c.index for c in stats.cells if c.kind == "reduction"] == [7, 14]


def closed_form_nasnet(C, stacks, N, K, J, m, in_ch=3, classes=10):
    """Per-cell (|X|, |Y|, params, d->x) and model params, from the paper's description only."""
    sum_inputs = sum(k + 1 for k in range(1, K + 1))  # node k's op reads d_a, d_b, z_1..z_{k-1}
    outs = [m * C, m * C]  # widths of the outputs of cells i-2, i-1 (stem where none)
    rows = []
    for s in range(stacks):
        Cs = C * 2**s
        for _ in range((1 if s else 0) + N):
            x = J * Cs * sum_inputs
            pre = Cs * outs[-2] + Cs * outs[-1]  # two 1x1 convs (factorized reduce has the same count)
            rows.append((x, K * J * Cs, pre + x * (9 + Cs), J * K * 2 * Cs))
            outs.append(K * Cs)
    model = sum(r[2] for r in rows) + (9 * in_ch * m * C + 2 * m * C) + (outs[-1] * classes + classes)
    return rows, model


@settings(max_examples=25, deadline=None)
@given(
    C=st.integers(1, 12),
    stacks=st.integers(1, 3),
    N=st.integers(1, 3),
    K=st.integers(1, 5),
    J=st.integers(1, 3),
    m=st.integers(1, 3),
)
def test_counts_match_closed_form(C, stacks, N, K, J, m):
    spec = parse_spec(
        {
            "name": "p",
            "input": {"channels": 3, "size": 8},
            "nasnet": {"channels": C, "stacks": stacks, "cells_per_stack": N, "nodes_per_cell": K,
                       "ops_per_node": J, "stem_multiplier": m},
        }
    )  # fmt: skip
    stats = compute_stats(cnas_ir.build(spec))
    rows, model = closed_form_nasnet(C, stacks, N, K, J, m)
    assert [(c.x, c.y, c.params, c.d_to_x) for c in stats.cells] == rows
    assert [c.z_to_x for c in stats.cells] == [r[0] - r[3] for r in rows]
    assert stats.model_params == model


def densenet_bc_params(k: int, depth: int, theta: float = 0.5, classes: int = 10, in_ch: int = 3) -> int:
    """DenseNet-BC for CIFAR as in Huang et al.: conv0 3x3 (2k), three dense blocks of n
    bottleneck layers BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k), transitions BN-ReLU-Conv1x1(theta),
    final BN and Linear with bias. BN has weight and bias; convs have no bias."""
    n = (depth - 4) // 6
    c = 2 * k
    total = 9 * in_ch * c
    for block in range(3):
        for _ in range(n):
            total += 2 * c + c * 4 * k + 2 * 4 * k + 4 * k * k * 9
            c += k
        if block < 2:
            out = int(c * theta)
            total += 2 * c + c * out
            c = out
    return total + 2 * c + c * classes + classes


def test_densenet_bc_100_matches_canonical_count():
    # 769,162: DenseNet-BC (L=100, k=12) on CIFAR-10, the "0.8M" of Huang et al.; it is also what
    # the formula above gives, which is written without the IR.
    assert densenet_bc_params(12, 100) == 769_162
    stats = compute_stats(cnas_ir.build(ROOT / "examples" / "densenet.yaml"))
    assert stats.model_params == 769_162


@settings(max_examples=10, deadline=None)
@given(k=st.integers(1, 16), n=st.integers(1, 6), theta=st.sampled_from([0.5, 1.0, 0.25]))
def test_densenet_counts_match_closed_form(k, n, theta):
    depth = 6 * n + 4
    spec = parse_spec(
        {"name": "d", "space": "densenet", "input": {"channels": 3, "size": 8},
         "densenet": {"growth_rate": k, "depth": depth, "compression": theta}}
    )  # fmt: skip
    stats = compute_stats(cnas_ir.build(spec))
    assert stats.model_params == densenet_bc_params(k, depth, theta)
    # x of a layer: a copy of every channel it reads; a kept x costs BN (2) + a 1x1 column (4k).
    assert stats.total.x == sum(sum((c0 + i * k) for i in range(n)) for c0 in _block_inputs(k, n, theta))


def _block_inputs(k: int, n: int, theta: float) -> list[int]:
    c, out = 2 * k, []
    for block in range(3):
        out.append(c)
        c += n * k
        if block < 2:
            c = int(c * theta)
    return out


def test_multiply_adds_of_a_hand_sized_cell():
    # One normal cell, C=2, K=1, J=1, m=1, 4x4 input, 3 input channels, 10 classes; by hand:
    # stem conv 9*3*2*16 = 864; d_a, d_b: 2*2*16 each = 128; op reads 4 channels:
    # DW 9*4*16 = 576, PW 4*2*16 = 128; head linear 2*10 = 20.
    spec = parse_spec({"name": "h", "input": {"channels": 3, "size": 4},
                       "nasnet": {"channels": 2, "stacks": 1, "cells_per_stack": 1, "nodes_per_cell": 1,
                                  "ops_per_node": 1, "stem_multiplier": 1}})  # fmt: skip
    assert compute_stats(cnas_ir.build(spec)).macs == 864 + 128 + 576 + 128 + 20
