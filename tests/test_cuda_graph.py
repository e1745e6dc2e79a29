"""CUDA graph replay for eval (issue 17): ``CudaGraphReplay`` and ``cnas-ir eval --cuda-graph``.

On a machine without CUDA the option is refused in one line (exit 2) and the wrapper refuses a
module that is not on a CUDA device; with CUDA, the replayed network gives the eager network's
outputs (the same kernels, launched from a graph) for every batch shape, a captured one replayed
again and a new one captured, and ``eval`` the same accuracy and loss.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnas_ir.app.cli import main
from cnas_ir.backends.pytorch import CudaGraphReplay, lower
from cnas_ir.backends.pytorch.train import evaluate
from cnas_ir.format import load
from helpers import EXAMPLES, inside
from helpers import run_cli as run

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, one_thread) -> Path:
    work = tmp_path_factory.mktemp("run")
    with inside(work):
        assert main(["build", str(EXAMPLES / "tiny.yaml")]) == 0
        assert main(["train", "--epochs", "1"]) == 0
    return work


def test_eval_cuda_graph_without_cuda_is_refused(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["eval", "--cuda-graph", "--device", "cpu"], trained, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--cuda-graph" in err and "cpu" in err


def test_eval_cuda_graph_of_an_onnx_model_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["eval", "model.onnx", "--cuda-graph"], tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1 and "onnxruntime" in err


def test_replay_refuses_a_module_off_cuda(tiny_graph) -> None:
    with pytest.raises(ValueError, match="CUDA device"):
        CudaGraphReplay(lower(tiny_graph, "compact"))


@cuda
def test_replay_equals_eager(trained: Path) -> None:
    graph = load(trained / "cnas-run" / "002-train.cnas")
    dev = torch.device("cuda")
    eager = lower(graph, "compact").to(dev).eval()
    replay = CudaGraphReplay(lower(graph, "compact").to(dev), max_graphs=2)
    s = graph.spec.input
    gen = torch.Generator().manual_seed(0)
    for batch in (1, 5, 1, 7, 5):  # captured, captured, replayed, eager (over max_graphs), replayed
        x = torch.randn(batch, s.channels, s.size, s.size, generator=gen).to(dev)
        with torch.inference_mode():
            want = eager(x)
        torch.testing.assert_close(replay(x), want, rtol=1e-5, atol=1e-5)


@cuda
def test_eval_with_and_without_cuda_graph_agree(trained: Path) -> None:
    graph = load(trained / "cnas-run" / "002-train.cnas")
    with inside(trained):
        plain = evaluate(graph, "test", device="cuda")
        graphed = evaluate(graph, "test", device="cuda", cuda_graph=True)
    assert graphed["n"] == plain["n"] and graphed["accuracy"] == pytest.approx(plain["accuracy"], abs=1e-3)
    assert graphed["loss"] == pytest.approx(plain["loss"], rel=1e-4)
