"""CIFAR-10 from a local folder (SPEC §8): the official binary format read as raw bytes, or the
python format read with :class:`RestrictedUnpickler`, which admits only the globals a numpy
array needs. Nothing is downloaded.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from cnas_ir.errors import InputError

from .data import Pair, carve

__all__ = ["RestrictedUnpickler", "cifar10", "find_cifar"]

_CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte + 3 colour planes of 32x32
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_VAL = 5000  # of the official 50,000 training images, as in the usual CIFAR-10 search setup


def cifar10(folder: Path, fmt: str, seed: int) -> tuple[Pair, Pair, Pair]:
    """The batches in ``folder`` (as :func:`find_cifar` found it) as (train, val, test) pairs."""
    read = _read_cifar_bin if fmt == "bin" else _read_cifar_py
    suffix = ".bin" if fmt == "bin" else ""
    parts = [read(folder / f"{b}{suffix}") for b in _CIFAR_TRAIN]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    test = read(folder / f"{_CIFAR_TEST}{suffix}")
    # 5,000 of 50,000 for validation; proportionally fewer for small (test-made) folders.
    n_val = min(_CIFAR_VAL, max(1, len(y) // 10))
    (tx, vx), (ty, vy) = carve(x, y, n_val, seed)

    def unit(a: np.ndarray) -> np.ndarray:  # uint8 -> float32 in [0, 1], one copy
        f = a.astype(np.float32)
        f /= 255
        return f

    return (unit(tx), unit(vx)), (ty, vy), (unit(test[0]), test[1])


def find_cifar(path: Path) -> tuple[Path, str]:
    """The folder holding the batches and its format (``bin`` or ``py``). ``path`` may be that
    folder or one holding ``cifar-10-batches-bin`` / ``cifar-10-batches-py``."""
    if not path.is_dir():
        raise InputError(
            f"{path}: no CIFAR-10 folder here; put the official binary (cifar-10-batches-bin) or python "
            f"(cifar-10-batches-py) batches in it and point data.path or --data cifar10:PATH at it "
            f"(cnas-ir downloads nothing)"
        )
    for folder in (path, path / "cifar-10-batches-bin", path / "cifar-10-batches-py"):
        if (folder / "data_batch_1.bin").is_file():
            fmt = "bin"
        elif (folder / "data_batch_1").is_file():
            fmt = "py"
        else:
            continue
        suffix = ".bin" if fmt == "bin" else ""
        for b in (*_CIFAR_TRAIN, _CIFAR_TEST):
            if not (folder / f"{b}{suffix}").is_file():
                raise InputError(f"{folder / (b + suffix)}: missing CIFAR-10 batch file")
        return folder, fmt
    raise InputError(
        f"{path}: no CIFAR-10 batches (data_batch_1.bin .. data_batch_5.bin, test_batch.bin, or the python "
        f"pickles data_batch_1 .. test_batch) in this folder (cnas-ir downloads nothing)"
    )


def _read_cifar_bin(file: Path) -> Pair:
    """Records of 1 label byte + 3,072 pixel bytes (R, G, B planes of 32x32, row-major)."""
    raw = np.fromfile(file, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise InputError(
            f"{file}: size {raw.size:,} bytes is not a whole number of {_CIFAR_RECORD}-byte CIFAR-10 records"
        )
    rec = raw.reshape(-1, _CIFAR_RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise InputError(f"{file}: label {int(labels.max())} out of range 0..9 (not a CIFAR-10 binary batch)")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for the CIFAR-10 python batches that admits only what a dict of numpy
    arrays, lists, bytes and numbers needs. Any other global -- ``os.system``,
    ``builtins.eval``, ``subprocess.Popen``, ... -- is refused *before* it is resolved, so a
    hostile pickle raises :class:`InputError` and executes nothing."""

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell bytes
            *(
                (mod, name)
                for mod in ("builtins", "__builtin__")
                for name in ("set", "frozenset", "bytearray", "complex", "slice")
            ),
        }
    )

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")  # Python 2 str -> bytes, as the CIFAR page says
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise InputError(
                f"{self.source}: refused to unpickle global {module}.{name} (only numpy arrays are allowed)"
            )
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # numpy 2 moved numpy.core
        return super().find_class(module, name)


def _read_cifar_py(file: Path) -> Pair:
    try:
        with open(file, "rb") as f:
            batch = RestrictedUnpickler(f, str(file)).load()
    except InputError:
        raise
    except Exception as e:  # a damaged pickle: any of UnpicklingError, EOFError, ValueError, ...
        raise InputError(f"{file}: not a CIFAR-10 python batch ({e.__class__.__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise InputError(f"{file}: not a CIFAR-10 python batch (a {type(batch).__name__}, not a dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise InputError(f"{file}: key 'data' must be a uint8 array [N, 3072], got {what}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise InputError(f"{file}: key 'labels' must be a list of integers") from None
    if y.shape != (data.shape[0],) or (y.size and (y.min() < 0 or y.max() > 9)):
        raise InputError(f"{file}: key 'labels' must hold {data.shape[0]} labels in 0..9")
    return data.reshape(-1, 3, 32, 32), y
