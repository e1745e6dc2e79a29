"""Datasets for training and evaluation (SPEC §8), read from local files only: nothing is downloaded.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 1 channel, values
  0..16, 10 classes), split 70/10/20 into train/val/test by a permutation seeded with
  ``spec.data.seed``.
- ``synthetic``: generated, learnable tensors shaped by ``spec.input`` and ``spec.classes``
  (one smooth random template per class plus noise), for tests.
- ``cifar10``: a local folder in the official *binary* format (``data_batch_1.bin`` ..
  ``data_batch_5.bin``, ``test_batch.bin``; records of 1 label byte + 3,072 pixel bytes) read
  as raw bytes, or the official *python* format (``data_batch_1`` .. ``data_batch_5``,
  ``test_batch``; pickles) read with :class:`RestrictedUnpickler`, which admits only the
  globals a numpy array needs. The validation split is carved from the training batches
  with ``spec.data.seed``.

Images are float32 ``[N, C, H, W]`` normalised per channel with the training split's mean and
standard deviation; labels are int64 ``[N]``. Augmentation (:class:`Augment`) runs on whole
batches with torch ops and a ``torch.Generator``, so it is reproducible.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnas_ir.errors import InputError
from cnas_ir.spec import Spec

__all__ = [
    "DATASETS",
    "Augment",
    "RestrictedUnpickler",
    "Split",
    "Splits",
    "default_augment",
    "load_dataset",
    "parse_data_option",
]

DATASETS = ("digits", "synthetic", "cifar10")

_CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte + 3 colour planes of 32x32
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_VAL = 5000  # of the official 50,000 training images, as in the usual CIFAR-10 search setup
_SYNTHETIC_SIZES = {"train": 640, "val": 160, "test": 320}
_SHAPES = {"digits": (1, 8, 10), "cifar10": (3, 32, 10)}  # channels, size, classes (synthetic: the spec's)


@dataclass(frozen=True)
class Split:
    """One split: ``images`` float32 ``[N, C, H, W]`` (normalised), ``labels`` int64 ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation of a batch, reproducible from a ``torch.Generator``.

    ``crop_pad``: random crop of the original size from the image zero-padded by this many
    pixels on every side (0: off). ``flip``: horizontal flip with probability 1/2. ``cutout``:
    side of a square zeroed at a random centre (DeVries & Taylor 2017; 0: off).
    """

    crop_pad: int = 0
    flip: bool = False
    cutout: int = 0

    @property
    def active(self) -> bool:
        return self.crop_pad > 0 or self.flip or self.cutout > 0

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``images`` float32 ``[N, C, H, W]``; random draws come from ``generator``
        (a CPU generator: the draws are the same whatever device the images are on)."""
        n, c, h, w = images.shape
        dev = images.device
        if self.crop_pad > 0:
            p = self.crop_pad
            padded = torch.nn.functional.pad(images, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(dev)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(dev)
            rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # [N, 1, H, 1]
            cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # [N, 1, 1, W]
            batch = torch.arange(n, device=dev)[:, None, None, None]
            chan = torch.arange(c, device=dev)[None, :, None, None]
            images = padded[batch, chan, rows, cols]
        if self.flip:
            flip = (torch.rand(n, generator=generator) < 0.5).to(dev)[:, None, None, None]
            images = torch.where(flip, images.flip(3), images)
        if self.cutout > 0:
            cy = torch.randint(0, h, (n,), generator=generator).to(dev)[:, None, None, None]
            cx = torch.randint(0, w, (n,), generator=generator).to(dev)[:, None, None, None]
            y = torch.arange(h, device=dev)[None, None, :, None]
            x = torch.arange(w, device=dev)[None, None, None, :]
            lo = self.cutout // 2
            hole = (y >= cy - lo) & (y < cy - lo + self.cutout) & (x >= cx - lo) & (x < cx - lo + self.cutout)
            images = images.masked_fill(hole, 0.0)
        return images


def default_augment(name: str, size: int) -> Augment:
    """The augmentation each dataset trains with by default.

    CIFAR-10: crop with padding 4 (scaled as size/8 for other sizes) and horizontal flips, the
    standard recipe. Digits: none -- a flipped digit is another glyph (2 vs 5), and the glyphs
    fill their 8x8 frame, so even a 1-pixel shift cuts off an eighth of one (measured: it costs
    ~1 point of test accuracy in the 15-epoch tiny run). Synthetic: none (its templates are
    positional).
    """
    if name == "cifar10":
        return Augment(crop_pad=max(1, round(size / 8)), flip=True)
    return Augment()


@dataclass(frozen=True)
class Splits:
    """The three splits of a dataset, plus its name and default training augmentation."""

    name: str
    train: Split
    val: Split
    test: Split
    augment: Augment = field(default_factory=Augment)
    mean: tuple[float, ...] = ()  # per-channel normalisation applied to the raw pixels
    std: tuple[float, ...] = ()

    def split(self, which: str) -> Split:
        if which not in ("train", "val", "test"):
            raise InputError(f"split {which!r}: expected train, val or test")
        return getattr(self, which)  # type: ignore[no-any-return]


def parse_data_option(value: str) -> tuple[str, str | None]:
    """``--data NAME[:PATH]`` -> (name, path or None); an unknown name is an InputError."""
    name, sep, path = value.partition(":")
    if name not in DATASETS:
        raise InputError(f"--data {value!r}: unknown dataset {name!r} (expected one of {', '.join(DATASETS)})")
    if sep and not path:
        raise InputError(f"--data {value!r}: empty path after ':'")
    if path and name != "cifar10":
        raise InputError(f"--data {value!r}: only cifar10 reads a folder; {name} is built in")
    return name, (path or None)


# ---- loading ---------------------------------------------------------------------------------


def check_data(
    spec: Spec, name_override: str | None = None, path_override: str | None = None
) -> tuple[str, tuple[Path, str] | None]:
    """Everything :func:`load_dataset` checks before it reads data: the name, a cifar10
    folder with every batch file in it, and that the data fits ``spec.input`` and
    ``spec.classes``. Returns the name and, for cifar10, the folder and its format. The
    ``--nproc`` launcher calls it so these errors come once, before any worker starts."""
    name = name_override or spec.data.name
    if name != "cifar10":
        _check_fits(spec, name)
        return name, None
    path = path_override or spec.data.path
    if path is None:
        raise InputError(
            "data.path: cifar10 needs a local folder (spec key data.path or --data cifar10:PATH); "
            "put the official cifar-10-batches-bin or cifar-10-batches-py there (nothing is downloaded)"
        )
    found = _find_cifar(Path(path))  # the folder's errors first, then the shape's
    _check_fits(spec, name)
    return name, found


def load_dataset(spec: Spec, name_override: str | None = None, path_override: str | None = None) -> Splits:
    """The dataset ``spec.data`` names (or ``name_override``/``path_override``), checked
    against ``spec.input`` and ``spec.classes``.

    Returns normalised float32 images ``[N, C, H, W]`` and int64 labels ``[N]`` per split.
    Raises :class:`InputError` (one line) for an unknown name, a missing or malformed folder,
    or data whose shape does not fit the spec.
    """
    name, cifar = check_data(spec, name_override, path_override)
    seed = spec.data.seed
    if cifar is not None:
        images, labels, raw_test = _cifar10(*cifar, seed)
    elif name == "digits":
        images, labels, raw_test = _digits(seed)
    else:
        images, labels, raw_test = _synthetic(spec.input.channels, spec.input.size, spec.classes, seed)
    channels, size = spec.input.channels, spec.input.size

    train_x, val_x = images
    train_y, val_y = labels
    test_x, test_y = raw_test
    # Normalise with the training split's statistics (val/test must not leak into them),
    # per channel so a float64 temporary is one channel, not the whole CIFAR-10 array.
    mean = np.array([train_x[:, c].mean(dtype=np.float64) for c in range(channels)])
    std = np.array([train_x[:, c].std(dtype=np.float64) for c in range(channels)])
    std = np.where(std > 0, std, 1.0)

    def make(x: np.ndarray, y: np.ndarray) -> Split:
        x = np.ascontiguousarray(x, dtype=np.float32)  # loaders give float32 in [0, 1]: no copy
        x -= mean.astype(np.float32)[None, :, None, None]
        x /= std.astype(np.float32)[None, :, None, None]
        return Split(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)))

    return Splits(
        name=name,
        train=make(train_x, train_y),
        val=make(val_x, val_y),
        test=make(test_x, test_y),
        augment=default_augment(name, size),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )


def _check_fits(spec: Spec, name: str) -> None:
    """Raise a one-line :class:`InputError` unless the data set ``name`` fits ``spec.input``
    and ``spec.classes`` (reads no data)."""
    if name not in DATASETS:
        raise InputError(f"data.name {name!r}: unknown dataset (expected one of {', '.join(DATASETS)})")
    if name not in _SHAPES:
        return  # synthetic data is made to the spec's shape
    channels, size, classes = _SHAPES[name]
    bad = []
    if spec.input.channels != channels:
        bad.append(f"input.channels is {spec.input.channels}, {name} has {channels}")
    if spec.input.size != size:
        bad.append(f"input.size is {spec.input.size}, {name} images are {size}x{size}")
    if spec.classes != classes:
        bad.append(f"classes is {spec.classes}, {name} has {classes}")
    if bad:
        raise InputError(f"data {name} does not fit the spec: " + "; ".join(bad))


_Pair = tuple[np.ndarray, np.ndarray]


def _carve(x: np.ndarray, y: np.ndarray, n_val: int, seed: int) -> tuple[_Pair, _Pair]:
    """Split (x, y) into (train, val) by a permutation seeded with ``seed``; val has n_val."""
    perm = np.random.default_rng(seed).permutation(len(y))
    val, train = perm[:n_val], perm[n_val:]
    return (x[train], x[val]), (y[train], y[val])


def _digits(seed: int) -> tuple[_Pair, _Pair, _Pair]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    x = d.images.astype(np.float32)[:, None, :, :] / np.float32(16)  # [1797, 1, 8, 8], values 0..16
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test, n_val = round(0.2 * len(y)), round(0.1 * len(y))
    test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    return (x[train], x[val]), (y[train], y[val]), (x[test], y[test])


def _synthetic(channels: int, size: int, classes: int, seed: int) -> tuple[_Pair, _Pair, _Pair]:
    """Class templates: smooth random patterns (drawn at a quarter of the resolution and
    upsampled) so convolutions and global pooling can tell them apart; images are a template
    plus Gaussian noise. Deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    coarse = max(1, size // 4)
    templates = rng.standard_normal((classes, channels, coarse, coarse))
    reps = -(-size // coarse)
    templates = np.repeat(np.repeat(templates, reps, axis=2), reps, axis=3)[:, :, :size, :size]

    def draw(n: int) -> _Pair:
        y = rng.integers(0, classes, n)
        x = templates[y] + 0.8 * rng.standard_normal((n, channels, size, size))
        return x.astype(np.float32), y.astype(np.int64)

    tr, va, te = (draw(_SYNTHETIC_SIZES[s]) for s in ("train", "val", "test"))
    return (tr[0], va[0]), (tr[1], va[1]), te


# ---- CIFAR-10 ----------------------------------------------------------------------------------


def _cifar10(folder: Path, fmt: str, seed: int) -> tuple[_Pair, _Pair, _Pair]:
    """The batches in ``folder`` (as :func:`_find_cifar` found it) as (train, val, test) pairs."""
    read = _read_cifar_bin if fmt == "bin" else _read_cifar_py
    suffix = ".bin" if fmt == "bin" else ""
    parts = [read(folder / f"{b}{suffix}") for b in _CIFAR_TRAIN]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    test = read(folder / f"{_CIFAR_TEST}{suffix}")
    # 5,000 of 50,000 for validation; proportionally fewer for small (test-made) folders.
    n_val = min(_CIFAR_VAL, max(1, len(y) // 10))
    (tx, vx), (ty, vy) = _carve(x, y, n_val, seed)

    def unit(a: np.ndarray) -> np.ndarray:  # uint8 -> float32 in [0, 1], one copy
        f = a.astype(np.float32)
        f /= 255
        return f

    return (unit(tx), unit(vx)), (ty, vy), (unit(test[0]), test[1])


def _find_cifar(path: Path) -> tuple[Path, str]:
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


def _read_cifar_bin(file: Path) -> _Pair:
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


def _read_cifar_py(file: Path) -> _Pair:
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
