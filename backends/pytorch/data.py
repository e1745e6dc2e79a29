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
- ``folder``: your own images, one subfolder per class, decoded with Pillow (see
  :func:`load_folder`): ``train/`` plus ``val/`` and/or ``test/`` at the top (ImageNet's
  layout), else one folder split by ``spec.data.seed``. Classes are the sorted folder names.

Images are float32 ``[N, C, H, W]`` normalised per channel with the training split's mean and
standard deviation (an image folder: of at most 10,000 training images, kept in the artifact);
labels are int64 ``[N]``. Augmentation (:class:`Augment`) runs on whole batches with torch ops
and a ``torch.Generator``, so it is reproducible. An image folder too big for memory is a
:class:`StreamSplit`: decoded from disk batch by batch in DataLoader workers instead.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cnas_ir.errors import InputError, RunFailure
from cnas_ir.spec import Spec

from . import distributed

__all__ = [
    "DATASETS",
    "FOLDER_MEMORY_LIMIT",
    "AnySplit",
    "Augment",
    "FolderLayout",
    "RestrictedUnpickler",
    "ShardSampler",
    "Split",
    "Splits",
    "StreamSplit",
    "check_data",
    "default_augment",
    "load_dataset",
    "load_folder",
    "parse_data_option",
]

DATASETS = ("digits", "synthetic", "cifar10", "folder")
_PATH_DATASETS = ("cifar10", "folder")  # the ones read from a local folder

_CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte + 3 colour planes of 32x32
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_VAL = 5000  # of the official 50,000 training images, as in the usual CIFAR-10 search setup
_SYNTHETIC_SIZES = {"train": 640, "val": 160, "test": 320}
_SHAPES = {"digits": (1, 8, 10), "cifar10": (3, 32, 10)}  # channels, size, classes (synthetic: the spec's)

# Image folders.
FOLDER_MEMORY_LIMIT = 2 * 2**30  # bytes of decoded float32 images kept in memory; a bigger folder streams
RESIZED_CROP_FROM = 64  # input size from which training crops are random-resized (below: pad and crop)
RESIZED_CROP_SCALE = (0.08, 1.0)  # Inception's box area fractions and aspect ratios
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)
_EVAL_CROP = 0.875  # evaluation: shorter side to size / 0.875, centre crop of size
_STATS_IMAGES = 10_000  # training images the normalisation statistics are taken from, at most
_VAL_FRACTION, _VAL_PER_CLASS = 0.1, 50  # validation carved from train/: 10% of a class, 50 at most
_TEST_FRACTION = 0.2  # a single folder: 20% test, 10% val, the rest train (per class)
# Formats decoded, by file extension and by Pillow plugin: common raster formats only (never
# EPS/PDF, which Pillow hands to Ghostscript).
_IMAGE_EXTENSIONS = frozenset(".jpg .jpeg .jpe .jfif .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .tga".split())
_PIL_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM", "TGA")


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
    ``resized_crop``: Inception's random-resized crop -- a box of 8% to 100% of the area with
    aspect ratio 3/4 to 4/3, resized (bilinear) back to the full size; on a batch in memory the
    box is clamped to the image instead of redrawn, so every draw is one vectorised step.
    """

    crop_pad: int = 0
    flip: bool = False
    cutout: int = 0
    resized_crop: bool = False

    @property
    def active(self) -> bool:
        return self.crop_pad > 0 or self.flip or self.cutout > 0 or self.resized_crop

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``images`` float32 ``[N, C, H, W]``; random draws come from ``generator``
        (a CPU generator: the draws are the same whatever device the images are on)."""
        n, c, h, w = images.shape
        dev = images.device
        if self.resized_crop:
            # Box sides as fractions of the image's: area fraction s, aspect ratio r (log-uniform).
            a0, a1 = RESIZED_CROP_SCALE
            s = a0 + (a1 - a0) * torch.rand(n, generator=generator)
            lo, hi = (math.log(r) for r in RESIZED_CROP_RATIO)
            r = torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator))
            bw, bh = (s * r).sqrt().clamp(max=1.0), (s / r).sqrt().clamp(max=1.0)
            theta = torch.zeros(n, 2, 3)  # sampling grid: output [-1, 1] -> the box in the input
            theta[:, 0, 0], theta[:, 1, 1] = bw, bh
            theta[:, 0, 2] = (1 - bw) * (2 * torch.rand(n, generator=generator) - 1)  # box centre
            theta[:, 1, 2] = (1 - bh) * (2 * torch.rand(n, generator=generator) - 1)
            grid = F.affine_grid(theta.to(dev, images.dtype), [n, c, h, w], align_corners=False)
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
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
    positional). An image folder: random-resized crops and flips from 64 pixels up (the
    ImageNet recipe), CIFAR's crop with padding and flips below, where a resized crop of a
    small image leaves too few pixels.
    """
    if name == "folder" and size >= RESIZED_CROP_FROM:
        return Augment(flip=True, resized_crop=True)
    if name in ("cifar10", "folder"):
        return Augment(crop_pad=max(1, round(size / 8)), flip=True)
    return Augment()


@dataclass(frozen=True)
class Splits:
    """The three splits of a dataset, plus its name and default training augmentation."""

    name: str
    train: AnySplit
    val: AnySplit
    test: AnySplit
    augment: Augment = field(default_factory=Augment)
    mean: tuple[float, ...] = ()  # per-channel normalisation applied to the raw pixels
    std: tuple[float, ...] = ()
    classes: tuple[str, ...] = ()  # class names in label order (an image folder's)

    def split(self, which: str) -> AnySplit:
        if which not in ("train", "val", "test"):
            raise InputError(f"split {which!r}: expected train, val or test")
        return getattr(self, which)  # type: ignore[no-any-return]

    @property
    def meta(self) -> dict[str, Any]:
        """What a trained graph keeps of its data (``Graph.data``): the name, the normalisation
        and the class names, so evaluation and export normalise and label as training did."""
        info: dict[str, Any] = {"name": self.name}
        if self.mean:
            info["mean"], info["std"] = list(self.mean), list(self.std)
        if self.classes:
            info["classes"] = list(self.classes)
        return info


def parse_data_option(value: str) -> tuple[str, str | None]:
    """``--data NAME[:PATH]`` -> (name, path or None); an unknown name is an InputError."""
    name, sep, path = value.partition(":")
    if name not in DATASETS:
        raise InputError(f"--data {value!r}: unknown dataset {name!r} (expected one of {', '.join(DATASETS)})")
    if sep and not path:
        raise InputError(f"--data {value!r}: empty path after ':'")
    if path and name not in _PATH_DATASETS:
        raise InputError(f"--data {value!r}: only cifar10 and folder read a folder; {name} is built in")
    return name, (path or None)


# ---- loading ---------------------------------------------------------------------------------


def check_data(spec: Spec, name_override: str | None = None, path_override: str | None = None) -> tuple[str, Any]:
    """Everything :func:`load_dataset` checks before it reads data: the name, a cifar10
    folder with every batch file in it (an image folder: its class folders and their files),
    and that the data fits ``spec.input`` and ``spec.classes``. Returns the name and, for
    cifar10, the folder and its format; for an image folder, its :class:`FolderLayout`. The
    ``--nproc`` launcher calls it so these errors come once, before any worker starts."""
    name = name_override or spec.data.name
    if name not in _PATH_DATASETS:
        _check_fits(spec, name)
        return name, None
    path = path_override or spec.data.path
    if path is None and name == "folder":
        raise InputError(
            "data.path: the folder data set needs a local folder of images, one subfolder per class "
            "(spec key data.path or --data folder:DIR)"
        )
    if path is None:
        raise InputError(
            "data.path: cifar10 needs a local folder (spec key data.path or --data cifar10:PATH); "
            "put the official cifar-10-batches-bin or cifar-10-batches-py there (nothing is downloaded)"
        )
    if name == "folder":
        _check_fits(spec, name)  # channels first: they decide nothing about the folder
        layout = FolderLayout.scan(Path(path), spec.data.seed)
        if len(layout.classes) != spec.classes:
            shown = ", ".join(layout.classes[:5]) + (", ..." if len(layout.classes) > 5 else "")
            raise InputError(
                f"{layout.root}: {len(layout.classes)} class folders ({shown}) but classes is {spec.classes} "
                f"in the spec; they must be equal"
            )
        return name, layout
    found = _find_cifar(Path(path))  # the folder's errors first, then the shape's
    _check_fits(spec, name)
    return name, found


def load_dataset(
    spec: Spec,
    name_override: str | None = None,
    path_override: str | None = None,
    *,
    stats: Mapping[str, Any] | None = None,
    classes: Sequence[str] | None = None,
    workers: int | None = None,
    memory_limit: int = FOLDER_MEMORY_LIMIT,
    warn: Callable[[str], None] | None = None,
) -> Splits:
    """The dataset ``spec.data`` names (or ``name_override``/``path_override``), checked
    against ``spec.input`` and ``spec.classes``.

    Returns normalised float32 images ``[N, C, H, W]`` and int64 labels ``[N]`` per split.
    Raises :class:`InputError` (one line) for an unknown name, a missing or malformed folder,
    or data whose shape does not fit the spec.

    The rest concerns an image folder (the built-in data sets are normalised with their
    training split's statistics, always): ``stats`` is a trained graph's ``Graph.data``; when it
    holds a folder's ``mean`` and ``std`` they normalise instead of statistics computed afresh.
    ``classes``: the class names the network was trained on; a folder with others is refused.
    ``workers``: DataLoader worker processes that decode (default: none for a folder kept in
    memory, up to 8 for a streamed one). ``memory_limit``: bytes of float32 images above which
    the folder is streamed. ``warn`` receives the one line about skipped images (default:
    stderr, on rank 0).
    """
    name, found = check_data(spec, name_override, path_override)
    if name == "folder":
        return load_folder(
            spec, found, stats=stats, classes=classes, workers=workers, memory_limit=memory_limit, warn=warn
        )
    seed = spec.data.seed
    if found is not None:
        images, labels, raw_test = _cifar10(*found, seed)
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
    if name == "folder" and spec.input.channels not in (1, 3):
        raise InputError(
            f"input.channels is {spec.input.channels}: folder images are decoded as L (1 channel) or RGB (3)"
        )
    if name not in _SHAPES:
        return  # synthetic data is made to the spec's shape; a folder's images are resized to it
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


# ---- image folders -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderLayout:
    """An image folder's files, split: ``files[s]`` (paths) and ``labels[s]`` (int64 indices
    into ``classes``, the sorted class-folder names) for s in train, val, test.

    With ``train/`` and ``val/`` and/or ``test/`` at the top (ImageNet's layout), each holding
    the same class folders, those are the splits; with only one of val/ and test/, it is the
    test split and the validation split is carved from train/ (10% of each class, at most 50,
    as CIFAR-10's is carved from its training batches). Otherwise the folder (or a lone
    ``train/``) is split per class by a permutation seeded with ``seed``: 20% test, 10% val.
    Files are every image below a class folder (recursively, sorted, hidden ones skipped).
    """

    root: Path
    classes: tuple[str, ...]
    files: dict[str, list[str]]
    labels: dict[str, np.ndarray]

    @classmethod
    def scan(cls, root: Path, seed: int) -> FolderLayout:
        """List and split ``root``; a missing folder, no class folders, an empty class folder or
        held-out folders whose classes differ from train/'s are one-line :class:`InputError`."""
        if not root.is_dir():
            raise InputError(f"{root}: no such folder (the folder data set reads one subfolder of images per class)")
        rng = np.random.default_rng(seed)
        held = [s for s in ("val", "test") if (root / s).is_dir()]
        if (root / "train").is_dir() and held:
            classes = _class_names(root / "train")
            train = _class_files(root / "train", classes)
            per = {}
            for s in held:
                names = _class_names(root / s)
                if names != classes:
                    lack, extra = sorted(set(classes) - set(names)), sorted(set(names) - set(classes))
                    raise InputError(
                        f"{root / s / lack[0]}: class folder of train/ is missing"
                        if lack
                        else f"{root / s / extra[0]}: class folder that train/ does not have"
                    )
                per[s] = _class_files(root / s, classes)
            if len(held) == 2:
                val, test = per["val"], per["test"]
            else:
                test = per[held[0]]
                parts = [_carve_class(f, rng, min(_VAL_PER_CLASS, round(_VAL_FRACTION * len(f))), 0) for f in train]
                train, val = [p[0] for p in parts], [p[1] for p in parts]
        else:
            base = root / "train" if (root / "train").is_dir() else root
            classes = _class_names(base)
            parts = [
                _carve_class(f, rng, round(_VAL_FRACTION * len(f)), round(_TEST_FRACTION * len(f)))
                for f in _class_files(base, classes)
            ]
            train, val, test = ([p[i] for p in parts] for i in range(3))
        files, labels = {}, {}
        for s, per_class in (("train", train), ("val", val), ("test", test)):
            files[s] = [f for fs in per_class for f in fs]
            labels[s] = np.concatenate([np.full(len(fs), c, np.int64) for c, fs in enumerate(per_class)])
        return cls(root, classes, files, labels)


def _class_names(folder: Path) -> tuple[str, ...]:
    try:
        with os.scandir(folder) as entries:
            names = tuple(sorted(e.name for e in entries if e.is_dir() and not e.name.startswith(".")))
    except OSError as e:
        raise InputError(f"{folder}: cannot read the folder ({e.strerror or e})") from None
    if not names:
        raise InputError(f"{folder}: no class folders (the folder data set expects one subfolder of images per class)")
    return names


def _class_files(folder: Path, classes: Sequence[str]) -> list[list[str]]:
    """Per class, its image files (sorted); an empty class folder is an :class:`InputError`."""
    out = []
    for c in classes:
        files = []
        for dirpath, dirnames, filenames in os.walk(folder / c):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files += [
                os.path.join(dirpath, f)
                for f in sorted(filenames)
                if not f.startswith(".") and os.path.splitext(f)[1].lower() in _IMAGE_EXTENSIONS
            ]
        if not files:
            raise InputError(f"{folder / c}: empty class folder (no JPEG, PNG, BMP, GIF, TIFF, WebP, PNM or TGA file)")
        out.append(files)
    return out


def _carve_class(files: list[str], rng: np.random.Generator, n_val: int, n_test: int) -> tuple[list[str], ...]:
    """(train, val, test) of one class's files by a seeded permutation; train keeps one at least."""
    n_val, n_test = min(n_val, len(files) - 1), min(n_test, max(0, len(files) - 1 - n_val))
    order = rng.permutation(len(files))
    pick = [sorted(order[n_val + n_test :]), sorted(order[:n_val]), sorted(order[n_val : n_val + n_test])]
    return tuple([files[i] for i in p] for p in pick)


# Decoding. Pillow's decompression-bomb limit stays on: an image of more than
# Image.MAX_IMAGE_PIXELS x 2 pixels fails to open and is skipped like any unreadable file.


def _open(path: str, channels: int, eval_size: int | None = None) -> Any:
    """The decoded image in L (1 channel) or RGB (3): palette images through RGBA, alpha
    dropped, 16-bit grey scaled to 8 bits. ``eval_size``: the image is only needed for the
    evaluation crop at that size, so a JPEG may be decoded at a reduced scale (DCT scaling)."""
    from PIL import Image

    with Image.open(path, formats=_PIL_FORMATS) as im:
        if eval_size is not None and im.format == "JPEG":
            k = eval_size / _EVAL_CROP / min(im.size)
            if k < 0.5:  # JPEG decodes at 1/2, 1/4 or 1/8 scale, never below the requested size
                im.draft(None, (math.ceil(im.size[0] * k), math.ceil(im.size[1] * k)))
        if im.mode in ("P", "PA", "LA", "La", "RGBa"):
            im = im.convert("RGBA")  # a palette's transparency, premultiplied alpha: resolved, then dropped
        elif im.mode.startswith("I"):  # 16-bit grey (PNG, TIFF)
            grey = np.clip(np.asarray(im, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
            im = Image.fromarray(grey, "L")
        if im.mode not in ("L", "RGB"):  # RGBA, CMYK, YCbCr, 1-bit, float: through RGB
            im = im.convert("RGB")
        return im.convert("L" if channels == 1 else "RGB")


def _centre(im: Any, size: int) -> Any:
    """Evaluation crop: the shorter side resized to size / 0.875 and the centred ``size`` square,
    as one resample of the centred square of 0.875 x the shorter side (bilinear, antialiased)."""
    from PIL import Image

    w, h = im.size
    side = _EVAL_CROP * min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return im.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))


def _random_resized(im: Any, size: int, rng: np.random.Generator) -> Any:
    """Inception's random-resized crop of the original image (torchvision's algorithm: ten
    tries at a box inside the image, else the centred square)."""
    from PIL import Image

    w, h = im.size
    lo, hi = (math.log(r) for r in RESIZED_CROP_RATIO)
    for _ in range(10):
        area = w * h * rng.uniform(*RESIZED_CROP_SCALE)
        ratio = math.exp(rng.uniform(lo, hi))
        bw, bh = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < bw <= w and 0 < bh <= h:
            left, top = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            break
    else:
        bw = bh = min(w, h)
        left, top = (w - bw) // 2, (h - bh) // 2
    return im.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + bw, top + bh))


def _to_array(im: Any, channels: int) -> np.ndarray:
    """uint8 [C, H, W] of a decoded L or RGB image."""
    a = np.asarray(im, dtype=np.uint8)
    return np.ascontiguousarray(a[None] if channels == 1 else a.transpose(2, 0, 1))


def _normalise(u8: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """float32 (u8 / 255 - mean) / std per channel, for [C, H, W] or [N, C, H, W]."""
    x = u8.astype(np.float32)
    x /= 255
    x -= mean.astype(np.float32).reshape(-1, 1, 1)
    x /= std.astype(np.float32).reshape(-1, 1, 1)
    return x


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {text[0]}" if text else e.__class__.__name__


class _FolderImages(Dataset):  # type: ignore[type-arg]
    """Files by index, for DataLoader workers. ``mode``: ``scan`` -> (i, error or ""): whether
    the file opens (its header); ``u8`` -> (i, uint8 [C, S, S] or None, error): the evaluation
    crop; ``eval`` / ``train`` -> (float32 [C, S, S] normalised, label, error): the evaluation
    crop, or the training one augmented by ``augment``. An unreadable file gives label
    ``-1 - i`` in eval/train, so the consumer can name it. Training draws come from a generator
    seeded with (``seed``, i): the same whichever worker decodes the image."""

    def __init__(
        self,
        files: Sequence[str],
        channels: int,
        size: int,
        mode: str,
        labels: np.ndarray | None = None,
        mean: Sequence[float] = (),
        std: Sequence[float] = (),
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        self.files, self.channels, self.size, self.mode = files, channels, size, mode
        self.labels = labels
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        i = int(i)  # samplers may hand out 0-d tensors
        path = self.files[i]
        if self.mode == "scan":
            try:
                from PIL import Image

                with Image.open(path, formats=_PIL_FORMATS):
                    return i, ""
            except Exception as e:  # any failure of a foreign file is "unreadable"
                return i, _why(e)
        if self.mode == "u8":
            try:
                return i, _to_array(_centre(_open(path, self.channels, self.size), self.size), self.channels), ""
            except Exception as e:
                return i, None, _why(e)
        assert self.labels is not None
        aug = self.augment if self.mode == "train" else None
        try:
            rng = np.random.default_rng([self.seed, i])
            if aug is not None and aug.resized_crop:
                im = _random_resized(_open(path, self.channels), self.size, rng)
                if aug.flip and rng.random() < 0.5:
                    im = im.transpose(0)  # Image.Transpose.FLIP_LEFT_RIGHT
                aug = Augment(cutout=aug.cutout)  # what is left to do on the tensor
            else:
                im = _centre(_open(path, self.channels, self.size), self.size)
            x = torch.from_numpy(_normalise(_to_array(im, self.channels), self.mean, self.std))
            if aug is not None and aug.active:
                gen = torch.Generator().manual_seed(int(rng.integers(2**63)))
                x = aug(x[None], gen)[0]
            return x, int(self.labels[i]), ""
        except Exception as e:
            return torch.zeros(self.channels, self.size, self.size), -1 - i, _why(e)


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def _loader(
    dataset: Dataset,  # type: ignore[type-arg]
    batches: Iterable[Sequence[int]],
    workers: int,
    collate: Callable[[list[Any]], Any] | None = None,
    pin_memory: bool = False,
) -> DataLoader:  # type: ignore[type-arg]
    return DataLoader(
        dataset,
        batch_sampler=batches,  # type: ignore[arg-type]
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        worker_init_fn=_ignore_sigint if workers else None,
    )


def _ignore_sigint(worker: int) -> None:
    """Workers leave Ctrl-C to the main process, which stops training after the current step
    (train.py) and then shuts them down: a worker dying of the signal would fail the step."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _chunks(indices: Sequence[int], size: int) -> list[list[int]]:
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]


class ShardSampler(DistributedSampler):  # type: ignore[type-arg]
    """A DistributedSampler over a given epoch order (int64 [N]): this rank's shard by
    DistributedSampler's rule (:func:`distributed.shard`), so a streamed epoch visits the
    images in the very order an epoch in memory does (the trainer's seeded permutation)."""

    def __init__(self, order: torch.Tensor) -> None:
        super().__init__(
            range(len(order)),  # type: ignore[arg-type]  # only its length is used
            num_replicas=distributed.world_size(),
            rank=distributed.rank(),
            shuffle=False,
        )
        self.order = order

    def __iter__(self) -> Iterator[int]:
        return iter(distributed.shard(self.order).tolist())


@dataclass(frozen=True, eq=False)
class StreamSplit:
    """A split of an image folder too big for memory, decoded from disk as it is used.

    ``files`` (paths) and ``labels`` int64 [N]; images come out as a :class:`Split`'s would:
    float32 [C, size, size], normalised with ``mean``/``std``. :meth:`batches` decodes in
    ``workers`` DataLoader processes; ``images[idx]`` decodes in this process (a few batches:
    saliency, a sample). A file that opened at the scan but fails to decode later stops the
    run with a one-line :class:`RunFailure` naming it.
    """

    files: tuple[str, ...]
    labels: torch.Tensor
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    workers: int = 0

    def __len__(self) -> int:
        return len(self.files)

    def to(self, device: torch.device | str) -> StreamSplit:
        return self  # batches are decoded on the CPU and moved to the device as they are drawn

    def _dataset(self, mode: str, augment: Augment | None = None, seed: int = 0) -> _FolderImages:
        return _FolderImages(
            self.files, self.channels, self.size, mode, self.labels.numpy(), self.mean, self.std, augment, seed
        )

    def batches(
        self,
        batches: Iterable[Sequence[int]],
        *,
        augment: Augment | None = None,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images float32 [n, C, S, S], labels int64 [n]) for each index list of ``batches``;
        training crops and augmentation with ``augment`` (drawn per image from ``seed`` and
        its index), else the evaluation crop."""
        mode = "train" if augment is not None else "eval"
        loader = _loader(self._dataset(mode, augment, seed), batches, self.workers, pin_memory=pin_memory)
        for x, y, why in loader:
            if bool((y < 0).any()):
                k = int((y < 0).nonzero()[0, 0])
                raise RunFailure(f"{self.files[-1 - int(y[k])]}: unreadable image ({why[k]}); remove it and rerun")
            yield x, y

    @property
    def images(self) -> _LazyImages:
        return _LazyImages(self)


class _LazyImages:
    """``split.images[idx]`` of a :class:`StreamSplit`: the evaluation crops of the indexed
    images (an int, a slice, a list or an int64 tensor), decoded in this process."""

    def __init__(self, split: StreamSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, idx: Any) -> torch.Tensor:
        if isinstance(idx, slice):
            indices = list(range(len(self.split)))[idx]
        elif isinstance(idx, torch.Tensor):
            indices = idx.reshape(-1).tolist()
        elif isinstance(idx, int):
            return self[[idx]][0]
        else:
            indices = [int(i) for i in idx]
        s = self.split
        if not indices:
            return torch.zeros(0, s.channels, s.size, s.size)
        return torch.stack([x for batch, _ in _plain(s).batches([indices]) for x in batch])


def _plain(split: StreamSplit) -> StreamSplit:
    """The split decoding in this process (no workers)."""
    return StreamSplit(split.files, split.labels, split.channels, split.size, split.mean, split.std, 0)


AnySplit = Split | StreamSplit


def _warn(message: str) -> None:
    if distributed.is_rank0():
        print(f"cnas-ir: warning: {message}", file=sys.stderr, flush=True)


def load_folder(
    spec: Spec,
    layout: FolderLayout,
    *,
    stats: Mapping[str, Any] | None = None,
    classes: Sequence[str] | None = None,
    workers: int | None = None,
    memory_limit: int = FOLDER_MEMORY_LIMIT,
    warn: Callable[[str], None] | None = None,
) -> Splits:
    """The splits of an image folder (arguments as for :func:`load_dataset`).

    Decoded size at most ``memory_limit`` bytes (float32): every image is decoded once, with
    the evaluation crop, and the splits are tensors like the built-in data sets' (training
    augments them on the batch -- from 64 pixels, random-resized crops of that crop; a run
    resumes bit for bit). Larger: every file's header is read and the splits are
    :class:`StreamSplit` (training crops the original images, in workers).
    Unreadable files are skipped and counted in one warning line. Normalisation: ``stats``'s
    mean and std, else measured on at most 10,000 training images (a seeded draw), with the
    evaluation crop.
    """
    channels, size = spec.input.channels, spec.input.size
    if classes is not None and tuple(classes) != layout.classes:
        raise InputError(
            f"{layout.root}: class folders ({', '.join(layout.classes[:5])}, ...) are not the classes the network "
            f"was trained on ({', '.join(list(classes)[:5])}, ...)"
        )
    total = sum(len(f) for f in layout.files.values())
    stream = total * channels * size * size * 4 > memory_limit
    n_workers = workers if workers is not None else (min(8, os.cpu_count() or 1) if stream else 0)
    kept: dict[str, np.ndarray] = {}  # split -> bool mask of the readable files
    pixels: dict[str, np.ndarray] = {}  # split -> uint8 [n, C, S, S] of the readable files (in memory)
    failed: list[tuple[str, str]] = []
    for s, files in layout.files.items():
        mask = np.zeros(len(files), bool)
        if stream:
            scan = _FolderImages(files, channels, size, "scan")
            for batch in _loader(scan, _chunks(range(len(files)), 256), n_workers, _as_list):
                for i, why in batch:
                    mask[i] = not why
                    if why:
                        failed.append((files[i], why))
        else:
            u8 = np.empty((len(files), channels, size, size), np.uint8)
            decode = _FolderImages(files, channels, size, "u8")
            for batch in _loader(decode, _chunks(range(len(files)), 64), n_workers, _as_list):
                for i, a, why in batch:
                    mask[i] = a is not None
                    if a is None:
                        failed.append((files[i], why))
                    else:
                        u8[i] = a
            pixels[s] = u8[mask] if not mask.all() else u8
        kept[s] = mask
    if failed:
        path, why = failed[0]
        (warn or _warn)(
            f"{layout.root}: skipped {len(failed):,} unreadable image(s) of {total:,} (first: {path}: {why})"
        )
    train_labels = layout.labels["train"][kept["train"]]
    for c, name in enumerate(layout.classes):
        if not (train_labels == c).any():
            raise InputError(f"{layout.root}: class {name!r} has no readable training image")

    if stats and stats.get("name") == "folder" and stats.get("mean") and stats.get("std"):
        mean, std = np.asarray(stats["mean"], np.float64), np.asarray(stats["std"], np.float64)
        if mean.shape != (channels,) or std.shape != (channels,):
            raise InputError(f"the stored normalisation has {mean.size} channels, input.channels is {channels}")
    else:
        n_train = int(kept["train"].sum())
        sample = np.sort(np.random.default_rng([spec.data.seed, 1]).permutation(n_train)[:_STATS_IMAGES])
        if stream:
            readable = np.flatnonzero(kept["train"])[sample]
            ds = _FolderImages(layout.files["train"], channels, size, "u8")
            arrays = (
                a for batch in _loader(ds, _chunks(readable.tolist(), 64), n_workers, _as_list) for _, a, _ in batch
            )
        else:
            arrays = iter(pixels["train"][sample])
        mean, std = _channel_stats(arrays, channels, layout.root)

    def make(s: str) -> AnySplit:
        labels = torch.from_numpy(layout.labels[s][kept[s]])
        if stream:
            files = tuple(f for f, k in zip(layout.files[s], kept[s], strict=True) if k)
            return StreamSplit(files, labels, channels, size, tuple(mean), tuple(std), n_workers)
        return Split(torch.from_numpy(_normalise(pixels.pop(s), mean, std)), labels)

    return Splits(
        name="folder",
        train=make("train"),
        val=make("val"),
        test=make("test"),
        augment=default_augment("folder", size),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        classes=layout.classes,
    )


def _channel_stats(arrays: Iterator[np.ndarray | None], channels: int, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of pixel / 255 over uint8 [C, H, W] images,
    from exact integer sums; a channel with no spread gets std 1."""
    total = np.zeros(channels, np.int64)
    squares = np.zeros(channels, np.int64)
    count = 0
    for a in arrays:
        if a is None:  # failed at the second decode: the warning has counted the first
            continue
        wide = a.reshape(channels, -1).astype(np.int64)
        total += wide.sum(1)
        squares += (wide * wide).sum(1)
        count += wide.shape[1]
    if count == 0:
        raise InputError(f"{root}: no readable training image to take the normalisation from")
    mean = total / (255.0 * count)
    var = np.maximum(squares / (255.0**2 * count) - mean**2, 0.0)
    std = np.sqrt(var)
    return mean, np.where(std > 0, std, 1.0)
