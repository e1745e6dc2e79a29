"""The compact module's fused inference path (eval, no autograd) against the reference paths.

``lower(graph, "compact")`` runs a NASNet cell through ``FusedCell`` when it is in eval mode and
autograd is off: one gather per node and stride from a buffer of ReLU'd states, one depthwise
conv per stride and one pointwise conv per node with the ops' BNs folded. It must compute the
function of the masked module, in channels-first and channels_last, and keep calling each op's
tap on its own input.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from test_pytorch_lower import SIZE, calibrated, logits, nasnet_graph, random_alive

from cnas_ir.backends.pytorch import lower
from cnas_ir.backends.pytorch.fused import FusedCell, gather_rows
from cnas_ir.backends.pytorch.nasnet import Preprocess

GRAPHS = {
    "nasnet": lambda: nasnet_graph(),
    "nasnet-2x2": lambda: nasnet_graph(channels=6, stacks=2, cells=2, nodes=2, ops=1),
    "nasnet-3ops": lambda: nasnet_graph(channels=5, stacks=2, cells=1, nodes=3, ops=3),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def reference(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The per-op reference path: eval mode with autograd on (what saliency runs)."""
    m.eval()
    with torch.enable_grad():
        return m(x).detach()


@pytest.mark.parametrize("space", GRAPHS)
@pytest.mark.parametrize(("seed", "fold"), [(0, True), (1, False), (2, True)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_compact_equals_masked(space: str, seed: int, fold: bool, channels_last: bool) -> None:
    g = calibrated(random_alive(GRAPHS[space](), seed, fold=fold), seed)
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    masked = lower(g, "masked")
    compact = lower(g, "compact")
    assert any(c._fused is not None for c in compact._cells())
    ref = logits(masked, x)
    if channels_last:
        compact = compact.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fused = logits(compact, x)
    assert (fused - ref).abs().max().item() < 1e-5
    assert (fused - reference(compact, x)).abs().max().item() < 1e-5
    with torch.inference_mode():
        assert torch.equal(compact(x), fused)  # inference_mode takes the same path
    if not channels_last:
        ref64 = logits(masked.double(), x.double())
        assert (logits(compact.double(), x.double()) - ref64).abs().max().item() < 1e-10


@pytest.mark.parametrize("channels_last", [False, True])  # channels_last: where the native kernel runs
def test_fused_path_calls_every_tap_on_its_own_input(channels_last: bool) -> None:
    g = calibrated(random_alive(nasnet_graph(), 3), 3)
    m = lower(g, "compact").eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    seen: dict[str, list[torch.Tensor]] = {}
    for name, mod in m.named_modules():
        if name.endswith(".x"):
            mod.register_forward_hook(lambda _m, inp, out, name=name: seen.setdefault(name, []).append(out.clone()))
    m(x)  # reference path (autograd on)
    ref = {k: list(v) for k, v in seen.items()}
    seen.clear()
    with torch.no_grad():
        m(x)
    assert seen.keys() == ref.keys() and ref
    for name, outs in ref.items():
        assert len(seen[name]) == len(outs), name  # one call per stride group, in x order
        for a, b in zip(seen[name], outs, strict=True):
            # Equal up to float rounding: later states come from BN-folded convs.
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5), name


def test_folded_weights_follow_weight_changes() -> None:
    g = calibrated(random_alive(nasnet_graph(), 4), 4)
    m = lower(g, "compact").eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        m(x)  # fills the cache
        for p in m.parameters():
            p.mul_(0.9)
        assert (m(x) - reference(m, x)).abs().max().item() < 1e-5
        m.cell2.d_b.bn.running_mean.add_(0.5)  # the preprocessing's BN is folded too
        assert (m(x) - reference(m, x)).abs().max().item() < 1e-5
        # a d_a computed by the previous cell (stacked with its d_b) follows its own BN
        cell = next(c for c in m._cells()[1:] if isinstance(c.d_a, Preprocess))
        cell.d_a.bn.running_var.mul_(1.5)
        assert (m(x) - reference(m, x)).abs().max().item() < 1e-5
    m.load_graph_weights(g)
    with torch.no_grad():
        assert (m(x) - reference(m, x)).abs().max().item() < 1e-5
    # a parameter replaced by assignment (not changed in place) is seen too
    op = next(mod for name, mod in m.named_modules() if name.endswith(".pw") and "cell2" in name)
    op.weight = torch.nn.Parameter(torch.randn_like(op.weight))
    with torch.no_grad():
        assert (m(x) - reference(m, x)).abs().max().item() < 1e-5


def test_gather_on_the_channels_last_view() -> None:
    buf = torch.randn(3, 10, 5, 5).contiguous(memory_format=torch.channels_last)
    index = torch.tensor([7, 1, 1, 4])
    out = gather_rows(buf, index)
    assert torch.equal(out, buf.index_select(1, index))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(gather_rows(buf, (2, 6)), buf[:, 2:6])


def test_contiguous_node_inputs_are_views() -> None:
    # The unpruned network: every op reads whole states, a node's ops of one stride read the
    # same prefix of the buffer, so no plan needs an index when there is one op per node.
    g = nasnet_graph(ops=1)
    m = lower(g.replace(alive=np.ones_like(g.alive)), "compact")
    reads = [r.read for c in m._cells() for node in c.plan.nodes for r in node.merged]
    assert reads and all(r.run is not None for r in reads)
    assert isinstance(m._cells()[0]._fused, FusedCell)


def test_fused_path_gathers_on_the_module_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # The plans' index tensors live on a plain object, which .to(device) does not move; a
    # compact module on CUDA failed at its first gather (found on a lent GPU). This machine has
    # no GPU: the meta device stands in, and every gather must get its index on the buffer's
    # device (meta kernels do not check that themselves).
    fused_mod = importlib.import_module("cnas_ir.backends.pytorch.fused")
    seen: list[tuple[torch.device, torch.device]] = []

    def checked(buf: torch.Tensor, index: torch.Tensor | tuple[int, int]) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            seen.append((buf.device, index.device))
        return gather_rows(buf, index)

    monkeypatch.setattr(fused_mod, "gather_rows", checked)
    g = calibrated(random_alive(GRAPHS["nasnet"](), 0, fold=True), 0)
    compact = lower(g, "compact").eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        compact(x)
    compact.to("meta")
    with torch.inference_mode():
        compact(x.to("meta"))
    assert seen and {b for b, _ in seen} == {torch.device("cpu"), torch.device("meta")}
    assert all(b == i for b, i in seen)


def test_fused_path_of_a_module_moved_under_inference_mode() -> None:
    # .to() under inference_mode makes the parameters inference tensors, which have no
    # in-place version counter: the staleness check of the folded weights must not need one.
    g = calibrated(random_alive(GRAPHS["nasnet"](), 0, fold=True), 0)
    x = torch.randn(2, 3, SIZE, SIZE)
    ref = logits(lower(g, "masked"), x)
    with torch.inference_mode():
        compact = lower(g, "compact").eval().to(torch.float64).to(torch.float32)
        assert (compact(x) - ref).abs().max().item() < 1e-5


def test_a_hook_on_the_preprocessing_is_called() -> None:
    # The fused path folds the preprocessing convs and BN and does not call those modules; a
    # hook on one of them sends its cell down the per-op path, so the hook still runs.
    g = calibrated(random_alive(nasnet_graph(), 5), 5)
    m = lower(g, "compact").eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    ref = reference(m, x)
    calls: list[tuple[int, ...]] = []
    m.cell2.d_a.register_forward_hook(lambda _m, _inp, out: calls.append(tuple(out.shape)))
    with torch.no_grad():
        out = m(x)
    assert len(calls) == 1 and (out - ref).abs().max().item() < 1e-5


def test_a_cell_called_alone_returns_its_raw_output() -> None:
    # Inside the network the fused cells hand on ReLU'd outputs; a cell called on its own
    # returns what the per-op path returns: the raw concatenation of its z.
    g = calibrated(random_alive(nasnet_graph(), 6), 6)
    m = lower(g, "compact").eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    s = m.stem(x)
    cell = m._cells()[0]
    with torch.enable_grad():
        ref = cell(s, s).detach()
    with torch.no_grad():
        out = cell(s, s)
    assert (ref < 0).any() and (out - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("channels_last", [False, True])
def test_pooled_buffers_are_never_handed_out_twice(channels_last: bool) -> None:
    # Cells take their state buffers from a pool shared by the network and give them back; a cell
    # output must be a copy, also when a slice of a buffer is contiguous already (batch 1, NCHW),
    # or the next cell overwrites it. Batches of 1, 7, 1 in a row, each against the masked module.
    # Unpruned, so that cell 1's buffer [d_a | d_b | z_1 | z_2] (4 + 4 + 4 + 4 channels) has the
    # shape of the reduction cell's [d_a | d_b] (8 + 8) at the same resolution: the pool hands
    # cell 1's buffer to cell 2, which reads cell 1's output.
    full = nasnet_graph(channels=4, stacks=2, cells=1, nodes=2, ops=1)
    g = calibrated(full.replace(alive=np.ones_like(full.alive)), 0)
    masked = lower(g, "masked").eval()
    compact = lower(g, "compact").eval()
    if channels_last:
        compact = compact.to(memory_format=torch.channels_last)
    for batch in (1, 7, 1):
        x = torch.randn(batch, 3, SIZE, SIZE)
        ref = logits(masked, x)
        xc = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        with torch.inference_mode():
            assert (compact(xc) - ref).abs().max().item() < 1e-5
        with torch.no_grad():
            assert (compact(xc) - ref).abs().max().item() < 1e-5


def test_train_mode_forward_without_autograd_updates_statistics_like_masked() -> None:
    # A train-mode forward under no_grad (BN calibration) runs the buffered path with no
    # autograd graph: its store dies with the call, and what it returned must not be a buffer
    # the next cell reuses.
    g = calibrated(random_alive(nasnet_graph(), 12, p_x=0.0), 12)
    x = torch.randn(8, 3, SIZE, SIZE)
    mods = {}
    for mode in ("masked", "compact"):
        m = lower(g, mode).train()
        with torch.no_grad():
            m(x)
        mods[mode] = dict(m.named_buffers())
    for name, t in mods["compact"].items():
        if name.endswith(("running_mean", "running_var")) and "node" in name:
            ref = mods["masked"][name]
            assert ref.shape == t.shape and torch.allclose(t, ref, rtol=1e-5, atol=1e-6), name


def test_fused_path_stacks_the_plans_preprocessing_convs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each cell whose plan stacks convs runs them as one conv of their rows (the first cell:
    its d_a, its d_b and cell 2's d_a, all of the stem), in the specs that
    test_fused_compact_equals_masked checks."""
    g = calibrated(random_alive(GRAPHS["nasnet-2x2"](), 0, fold=True), 0)
    compact = lower(g, "compact").eval()
    rows: list[int] = []
    real = FusedCell._stacked
    monkeypatch.setattr(FusedCell, "_stacked", lambda self, convs: rows.append(len(convs)) or real(self, convs))
    with torch.inference_mode():
        compact(torch.randn(2, 3, SIZE, SIZE))
    want = [len(c.plan.stacked) for c in compact._cells() if c.plan.stacked]
    assert rows == want and want[0] == 3 and 2 in want
