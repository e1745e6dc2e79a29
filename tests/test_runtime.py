"""Runtime settings cnas-ir chooses for the user: oneDNN's primitive cache and the training layout."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnas_ir.app.cli import main
from helpers import TINY_SYNTHETIC

# 64 x 18 = 1,152 distinct 3x3 convolutions, twice: more than oneDNN's default cache of 1,024.
PROBE = """
import torch
import cnas_ir.backends.pytorch  # sets the cache size unless the environment does
x = torch.randn(2, 64, 8, 8)
for r in range(2):
    print(f"ROUND {r}", flush=True)
    for c in range(1, 65):
        for k in range(1, 19):
            torch.nn.functional.conv2d(x[:, :c], torch.randn(k, c, 3, 3), padding=1)
"""


def _conv_misses(tmp_path: Path, capacity: str | None) -> list[int]:
    """Per round, how many convolution primitives oneDNN created anew (ONEDNN_VERBOSE=2)."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    env |= {"ONEDNN_VERBOSE": "2", "OMP_NUM_THREADS": "1"}
    if capacity is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = capacity
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, check=True).stdout
    misses, round_ = [], -1
    for line in out.splitlines():
        if line.startswith("ROUND"):
            misses.append(0)
            round_ += 1
        elif "create:cache_miss" in line and ",convolution," in line:
            misses[round_] += 1
    return misses


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch build")
def test_onednn_cache_is_large_enough_unless_the_user_says_otherwise(tmp_path: Path) -> None:
    # cnas-ir's default: every primitive of the first round is found again in the second.
    assert _conv_misses(tmp_path, None) == [1152, 0]
    # The user's own setting wins, and oneDNN's default size would re-create every primitive.
    first, second = _conv_misses(tmp_path, "1024")
    assert first == 1152 and second > 1000


def test_train_uses_channels_last_unless_told_nchw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    lower_mod = importlib.import_module("cnas_ir.backends.pytorch.lower")
    made: list[torch.nn.Module] = []
    real = lower_mod.lower

    def spy(*args: object, **kwargs: object) -> torch.nn.Module:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(lower_mod, "lower", spy)
    spec = tmp_path / "s.yaml"
    # three input channels: the stem's 3x3 weight then tells NCHW and NHWC apart
    spec.write_text(json.dumps(TINY_SYNTHETIC | {"input": {"channels": 3, "size": 8}}))  # JSON is YAML
    monkeypatch.chdir(tmp_path)
    assert main(["build", str(spec)]) == 0
    layouts = []
    for args in ([], ["--layout", "nchw"], ["--channels-last"]):
        made.clear()
        assert main(["train", "--epochs", "1", *args, "-o", str(tmp_path / "t.cnas")]) == 0
        w = made[0].stem.conv.weight  # after .to(): the module that trained
        layouts.append(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous())
    assert layouts == [True, False, True]
    capsys.readouterr()
