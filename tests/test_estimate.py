"""The closed-form size estimate (issue 19) against the graph, the weight table and autograd.

Every count of :func:`cnas_ir.estimate.estimate` is compared with the same count taken from
an independent source: the built graph's columns, the weight table's shapes, the nbytes of the
arrays a search holds, and (for activations) the tensors autograd saves in a training step.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnas_ir.backends.pytorch import lower
from cnas_ir.estimate import estimate, format_size, largest_contributor, parse_size
from cnas_ir.ir import DENSE
from cnas_ir.passes.build import build_graph
from cnas_ir.passes.stats import compute_stats
from cnas_ir.spec import parse_spec
from cnas_ir.weights import weight_table

SPECS = {
    "paper": {"name": "p"},
    "imagenet": {"name": "i", "input": {"size": 224}, "classes": 1000, "nasnet": {"stem": "imagenet"}},
    "one-stack": {"name": "t", "nasnet": {"channels": 4, "stacks": 1, "cells_per_stack": 1, "nodes_per_cell": 2,
                                          "ops_per_node": 3}},
    "one-cell-per-stack": {"name": "t", "input": {"size": 7},
                           "nasnet": {"channels": 3, "stacks": 4, "cells_per_stack": 1, "nodes_per_cell": 4,
                                      "ops_per_node": 1, "stem_multiplier": 1}},
    "imagenet-odd": {"name": "t", "input": {"channels": 1, "size": 37},
                     "nasnet": {"channels": 5, "stacks": 2, "cells_per_stack": 3, "stem": "imagenet",
                                "stem_multiplier": 3}},
    "densenet-bc-100": {"name": "d", "space": "densenet"},
    "densenet-odd": {"name": "d", "space": "densenet", "input": {"size": 9},
                     "densenet": {"depth": 22, "growth_rate": 5, "compression": 0.3, "bottleneck_width": 2}},
}  # fmt: skip


@pytest.mark.parametrize("name", SPECS)
def test_counts_equal_the_built_graph(name: str) -> None:
    spec = parse_spec(SPECS[name])
    g = build_graph(spec)
    e = estimate(spec)
    assert (e.vertices, e.x_vertices, e.groups, e.bundles) == (
        g.num_vertices,
        g.x_ids.size,
        g.num_groups,
        g.num_bundles,
    )
    # a dense bundle joins every src channel to every dst channel, the others one to one
    s, t = g.size[g.bundle_src], g.size[g.bundle_dst]
    assert e.channel_edges == int(np.where(np.isin(g.bundle_kind, list(DENSE)), s * t, s).sum())
    assert e.channel_edges == compute_stats(g).edges
    table = weight_table(g)
    assert e.params == sum(int(np.prod(i.shape)) for i in table.values() if not i.buffer)
    assert e.weight_values == sum(int(np.prod(i.shape)) for i in table.values())
    assert e.weight_bytes == 4 * e.weight_values
    # the IR's columns and the derived per-vertex columns a search holds
    held = [getattr(g, c) for c in ("kind", "cell", "node", "op", "start", "size", "res", "alive", "src", "saliency")]
    held += [g.bundle_kind, g.bundle_src, g.bundle_dst, g.vertex_group, g.op_of_vertex, g.x_cost, g.x_ids]
    assert e.ir_bytes == sum(a.nbytes for a in held)


def saved_for_backward(spec_doc: dict, batch: int) -> int:
    """Bytes of the distinct storages autograd saves in one training step of the masked module."""
    spec = parse_spec(spec_doc)
    m = lower(build_graph(spec), "masked").train()
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        storages[st.data_ptr()] = max(storages.get(st.data_ptr(), 0), st.nbytes())
        return t

    x = torch.randn(batch, spec.input.channels, spec.input.size, spec.input.size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(m(x), torch.zeros(batch, dtype=torch.long))
    loss.backward()
    return sum(storages.values())


@pytest.mark.parametrize(
    "doc",
    [
        {"name": "t", "input": {"size": 16}, "nasnet": {"channels": 8, "stacks": 2, "cells_per_stack": 2,
                                                         "nodes_per_cell": 3, "spatial_dropout": 0.0}},
        {"name": "i", "input": {"size": 64}, "nasnet": {"channels": 8, "stacks": 3, "cells_per_stack": 1,
                                                         "stem": "imagenet", "spatial_dropout": 0.0}},
        {"name": "d", "space": "densenet", "input": {"size": 16}, "densenet": {"depth": 22}},
    ],
    ids=["nasnet", "imagenet-stem", "densenet"],
)  # fmt: skip
def test_activation_estimate_is_within_30_percent_of_what_autograd_saves(doc: dict) -> None:
    batch = 4
    e = estimate(parse_spec(doc | {"train": {"batch_size": batch}}))
    measured = saved_for_backward(doc, batch)
    assert 0.8 <= e.activation_bytes / measured <= 1.3, (e.activation_bytes, measured)
    assert e.activation_bytes_at(2 * batch) == 2 * e.activation_bytes


@pytest.mark.parametrize(
    ("nas", "key"),
    [
        ({"channels": 1_000_000}, "nasnet.channels"),
        ({"cells_per_stack": 100_000}, "nasnet.cells_per_stack"),
        ({"stacks": 1_000_000_000}, "nasnet.stacks"),
        ({"nodes_per_cell": 5_000}, "nasnet.nodes_per_cell"),
    ],
)
def test_huge_specs_are_estimated_at_once_and_name_their_key(nas: dict, key: str) -> None:
    spec = parse_spec({"name": "huge", "nasnet": nas})
    t0 = time.process_time()
    e = estimate(spec)
    assert largest_contributor(spec) == key
    assert time.process_time() - t0 < 1.0  # closed form: no loop over cells or nodes
    assert e.build_bytes > 4 * 2**30
    assert e.at_least == (key == "nasnet.stacks")


def test_densenet_depth_is_the_key() -> None:
    spec = parse_spec({"name": "d", "space": "densenet", "densenet": {"depth": 600_004}})
    assert estimate(spec).build_bytes > 4 * 2**30 and largest_contributor(spec) == "densenet.depth"


def test_batch_size_names_the_activation_key() -> None:
    spec = parse_spec({"name": "p", "train": {"batch_size": 100_000}})
    assert largest_contributor(spec, "activation_bytes") == "train.batch_size"


@pytest.mark.parametrize(
    ("text", "n"),
    [("8G", 8 * 2**30), ("500M", 500 * 2**20), ("1.5T", int(1.5 * 2**40)), ("4096", 4096), ("2GiB", 2 * 2**30),
     ("64kb", 64 * 1024)],
)  # fmt: skip
def test_parse_size(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "G", "eight", "-1G", "0", "nanG", "1X"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(4 * 2**30) == "4 GiB" and format_size(226 * 2**20) == "226 MiB" and format_size(10) == "10 B"
