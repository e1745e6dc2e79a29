"""The memory a training step may use on its device, for the check before training
(:func:`cnas_ir.estimate.check_training_memory`; ``cnas-ir train`` and ``prune``, ``--force``).

CUDA: the free memory of the process's GPU. CPU: the kernel's MemAvailable, lowered to what a
cgroup v2 memory limit (a container's) still allows.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["available_bytes"]


def _read_int(path: Path, key: str | None = None) -> int | None:
    """An integer from a /proc or /sys file: the whole file, or the line starting ``key``."""
    try:
        text = path.read_text()
    except OSError:
        return None
    if key is not None:
        line = next((ln for ln in text.splitlines() if ln.startswith(key)), "")
        parts = line.split()
        return int(parts[1]) * 1024 if len(parts) >= 2 and parts[1].isdigit() else None  # kB
    text = text.strip()
    return int(text) if text.isdigit() else None


def _cpu_available() -> int:
    free = _read_int(Path("/proc/meminfo"), "MemAvailable:")
    if free is None:  # not Linux: the free physical pages
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 1 << 62  # unknown: no check
    cgroup = Path("/sys/fs/cgroup")
    limit, used = _read_int(cgroup / "memory.max"), _read_int(cgroup / "memory.current")
    if limit is not None and used is not None:
        free = min(free, max(0, limit - used))
    return free


def available_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes a training step may still allocate on ``device``, the device in words)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), f"GPU {device.index if device.index is not None else torch.cuda.current_device()}"
    return _cpu_available(), "this machine's memory"
