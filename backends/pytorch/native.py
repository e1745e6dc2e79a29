"""Native CPU kernels of the PyTorch backend, compiled on this machine on first use.

A node's read of its input channels and its depthwise 3x3 conv as one pass
(``gather_depthwise.cpp``), which never writes the gathered channels:

- :func:`gather_depthwise`, the forward, in the fused inference path and the training path: the
  eval forward of the paper config at rho 0.46 in channels_last takes 0.82x the time at batch 32
  and 0.76x at batch 1;
- :func:`gather_depthwise_backward`, the training path's backward: the input's gradient is added
  straight into the gradient buffer's columns (no gradient of the gathered channels, no
  ``scatter_add_``) and the weight's is computed from the buffer. With the forward, a training
  step of the paper config takes 0.89x the time (``bench_ab.py``, BENCHMARKS.md).

They are built with ``torch.utils.cpp_extension`` (a C++ compiler and ninja; ``-O3 -march=native``)
the first time a forward can use them, into ``$XDG_CACHE_HOME/cnas-ir/native`` (default
``~/.cache``; ``CNAS_IR_NATIVE_DIR`` overrides), one folder per source, torch version and CPU,
and loaded from there afterwards. ``CNAS_IR_NATIVE=0`` turns them off. When the build fails (no
compiler), one warning says why and the PyTorch ops gather, as they do for every tensor the
kernels do not take (float64, CUDA; channels-first in inference; a hooked tap).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

__all__ = ["available", "gather_depthwise", "gather_depthwise_backward", "load", "takes", "trains"]

SOURCE = Path(__file__).with_name("gather_depthwise.cpp")
CFLAGS = ["-O3", "-march=native", "-fopenmp"]

_module: ModuleType | None = None
_failed: str | None = None  # why the build failed, once it has


def _cpu() -> str:
    """What ``-march=native`` compiles for: the CPU's model and flags (a shared cache folder
    must not hand one machine another's instructions)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    keys = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in keys}))


def build_directory() -> Path:
    """Where this source, torch version and CPU's build lives."""
    root = os.environ.get("CNAS_IR_NATIVE_DIR")
    if root is None:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(cache) / "cnas-ir" / "native")
    key = "\n".join([SOURCE.read_text(), torch.__version__, " ".join(CFLAGS), _cpu()])
    return Path(root) / f"gather_depthwise_{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def load() -> ModuleType | None:
    """The compiled kernels' module, built on the first call (about 30 s); None when turned off
    (``CNAS_IR_NATIVE=0``) or when the build failed (with one warning, the first time)."""
    global _module, _failed
    if _module is not None or _failed is not None:
        return _module
    if os.environ.get("CNAS_IR_NATIVE", "1") == "0":
        return None
    try:
        from torch.utils import cpp_extension

        if shutil.which("ninja") is None and (Path(sys.executable).parent / "ninja").exists():
            # ninja installed into this environment (the project's test extra), not on PATH
            os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        folder = build_directory()
        name = folder.name
        if not (folder / f"{name}.so").exists():
            print(f"cnas-ir: compiling the native gather kernels into {folder} (once, about 30 s)", file=sys.stderr)
        folder.mkdir(parents=True, exist_ok=True)
        _module = cpp_extension.load(
            name,
            [str(SOURCE)],
            extra_cflags=CFLAGS,
            extra_ldflags=["-fopenmp"],
            build_directory=str(folder),
            verbose=False,
        )
    except Exception as e:  # no compiler, no ninja, a failed link: the PyTorch ops still work
        _failed = " ".join(str(e).split())[:300] or type(e).__name__
        warnings.warn(
            f"cnas-ir: the native gather kernels could not be built ({_failed}); "
            "PyTorch ops do the gathers (set CNAS_IR_NATIVE=0 to skip the build)",
            RuntimeWarning,
            stacklevel=2,
        )
    return _module


def available() -> bool:
    """Whether the kernels run (building them if they have not been built yet)."""
    return load() is not None


def takes(x: Tensor) -> bool:
    """Whether the kernel takes ``x``: a float32 CPU tensor in channels_last, autograd off."""
    return (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not (torch.is_grad_enabled() and x.requires_grad)
    )


def trains(x: Tensor) -> bool:
    """Whether the training path's kernels take the state buffer ``x``: float32 on the CPU."""
    return x.dtype == torch.float32 and x.device.type == "cpu"


def gather_depthwise(x: Tensor, index: Tensor, weight_t: Tensor, stride: int) -> Tensor:
    """``conv2d(x[:, index], w, stride=stride, padding=1, groups=len(index))`` for a depthwise
    3x3 weight ``w`` (K, 1, 3, 3) given as ``weight_t`` = ``w.reshape(K, 9).t()`` (contiguous);
    ``index`` int32[K]; ``x`` float32 on the CPU in channels_last. Needs :func:`available`."""
    assert _module is not None
    return _module.gather_depthwise3x3(x, index, weight_t, stride)


def gather_depthwise_backward(
    dy: Tensor, x: Tensor, index: Tensor, weight_t: Tensor, stride: int, grad_x: Tensor
) -> Tensor:
    """The backward of :func:`gather_depthwise` at the output's gradient ``dy``: adds x's
    gradient into ``grad_x`` (x's shape, channels_last; a channel that ``index`` repeats gets
    the sum of its copies') and returns the weight's gradient as (9, K), like ``weight_t``."""
    assert _module is not None
    return _module.gather_depthwise3x3_backward(dy, x, index, weight_t, stride, grad_x)
