"""The native gather + depthwise kernel (backends/pytorch/native.py) and its use by the fused path.

The reference for the kernel is written here: ``index_select`` of the channels, then
``F.conv2d`` with ``groups`` = the channel count, in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_pytorch_lower import SIZE, calibrated, logits, nasnet_graph, random_alive

from cnas_ir.backends.pytorch import lower, native

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def kernel() -> None:
    # The project's set-up has a C++ compiler and ninja (README): the build must succeed here.
    assert native.available(), "the native kernel did not build (see the warning above)"


def reference(x: torch.Tensor, index: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
    gathered = x.double().index_select(1, index.long())
    return F.conv2d(gathered, w.double(), stride=stride, padding=1, groups=w.shape[0])


CASES = [  # (N, C, H, W, K, stride)
    (2, 20, 8, 8, 7, 1),
    (3, 40, 7, 5, 17, 1),  # odd sizes, K past one block of 16
    (1, 33, 9, 9, 33, 2),  # stride 2 over odd sizes
    (2, 16, 6, 10, 16, 2),  # K exactly one block
    (1, 64, 1, 1, 40, 1),  # one pixel: every tap but the centre reads padding
    (2, 8, 2, 3, 1, 2),  # one channel
    (4, 50, 5, 4, 70, 1),  # more channels than the buffer: repeats
]


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize(("n", "c", "h", "w", "k", "stride"), CASES)
def test_kernel_equals_gather_then_depthwise(n: int, c: int, h: int, w: int, k: int, stride: int) -> None:
    gen = torch.Generator().manual_seed(n * 1000 + c + k)
    x = torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    # any order, repeats allowed (a merged read lists each op's channels in turn)
    index = torch.randint(0, c, (k,), generator=gen, dtype=torch.int32)
    weight = torch.randn(k, 1, 3, 3, generator=gen)
    got = native.gather_depthwise(x, index, weight.reshape(k, 9).t().contiguous(), stride)
    want = reference(x, index, weight, stride)
    assert got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert (got.double() - want).abs().max().item() < 1e-5


@pytest.mark.usefixtures("kernel")
def test_kernel_refuses_what_it_cannot_read() -> None:
    x = torch.randn(1, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    wt = torch.randn(9, 2)
    for bad_index in ([0, 8], [-1, 0]):  # out of range: would read outside x
        with pytest.raises(RuntimeError, match="index out of range"):
            native.gather_depthwise(x, torch.tensor(bad_index, dtype=torch.int32), wt, 1)
    with pytest.raises(RuntimeError, match="channels_last"):
        native.gather_depthwise(torch.randn(2, 8, 4, 4), torch.tensor([0, 1], dtype=torch.int32), wt, 1)
    with pytest.raises(RuntimeError, match="float32"):
        native.gather_depthwise(x.double(), torch.tensor([0, 1], dtype=torch.int32), wt, 1)
    with pytest.raises(RuntimeError, match="weight_t"):
        native.gather_depthwise(x, torch.tensor([0, 1, 2], dtype=torch.int32), wt, 1)
    with pytest.raises(RuntimeError, match="stride"):
        native.gather_depthwise(x, torch.tensor([0, 1], dtype=torch.int32), wt, 3)


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_path_runs_the_kernel_and_equals_the_pytorch_gathers(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    g = calibrated(random_alive(nasnet_graph(channels=5, stacks=2, cells=1, nodes=3, ops=3), seed, fold=True), seed)
    m = lower(g, "compact").to(memory_format=torch.channels_last).eval()
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    x = x.contiguous(memory_format=torch.channels_last)
    reads = sum(len(node.merged) for c in m._cells() if c._fused for node in c._fused.plan.nodes if node.computed)
    calls = []
    run = native.gather_depthwise
    monkeypatch.setattr(native, "gather_depthwise", lambda *a: calls.append(a) or run(*a))
    with_kernel = logits(m, x)
    assert len(calls) == reads > 0  # every merged read of every cell
    monkeypatch.setattr(native, "available", lambda: False)
    without = logits(m, x)
    assert len(calls) == reads
    assert (with_kernel - without).abs().max().item() < 1e-5
    ref = logits(lower(g, "masked").double(), x.double())
    assert (with_kernel.double() - ref).abs().max().item() < 1e-5


def test_turned_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_failed", None)
    monkeypatch.setenv("CNAS_IR_NATIVE", "0")
    assert not native.available()


def test_a_failed_build_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    broken = tmp_path / "gather_depthwise.cpp"
    broken.write_text("#error this source does not compile\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_failed", None)
    monkeypatch.setenv("CNAS_IR_NATIVE_DIR", str(tmp_path / "build"))
    monkeypatch.delenv("CNAS_IR_NATIVE", raising=False)
    with pytest.warns(RuntimeWarning, match="could not be built"):
        assert native.load() is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not native.available()  # no second build, no second warning
