"""``torch.compile`` on compact modules: training and eval compute what eager does.

Under compilation every cell takes the per-op path (plain tensor code; the buffered and fused
paths keep eager state), so this also checks that path against the eager ones. A small spec:
compiling the paper network takes about 10 minutes on two cores.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import cnas_ir
from cnas_ir.app.cli import main
from cnas_ir.backends.pytorch import lower
from cnas_ir.passes.fold import fold
from cnas_ir.passes.prune import prune_to_rho, random_saliency
from helpers import TINY_SYNTHETIC

SPEC = TINY_SYNTHETIC | {"nasnet": TINY_SYNTHETIC["nasnet"] | {"spatial_dropout": 0.0}}


def test_compiled_compact_module_trains_and_infers_like_eager() -> None:
    g = cnas_ir.build(SPEC)
    pruned = fold(prune_to_rho(g, 0.6, score=lambda h: random_saliency(h, 0), criterion="random"))
    torch.manual_seed(0)
    eager = lower(pruned, "compact", weights=False).train()
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module)
    x = torch.randn(8, 1, 8, 8)
    y = torch.arange(8) % 4
    out = compiled(x)
    F.cross_entropy(out, y).backward()
    ref = eager(x)
    F.cross_entropy(ref, y).backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(eager.named_parameters(), compiled_module.parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, a), b in zip(eager.named_buffers(), compiled_module.buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)  # running statistics
    eager.eval()
    compiled.eval()
    with torch.no_grad():  # eager takes the fused path here
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_train_compile_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps(SPEC))
    monkeypatch.chdir(tmp_path)
    assert main(["build", str(spec)]) == 0
    assert main(["train", "--epochs", "1", "--compile"]) == 0
    assert "trained" in capsys.readouterr().err
