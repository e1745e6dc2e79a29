"""Datasets for training and evaluation (SPEC §8), read from local files only: nothing is downloaded.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 1 channel, values
  0..16, 10 classes), split 70/10/20 into train/val/test by a permutation seeded with
  ``spec.data.seed``.
- ``synthetic``: generated, learnable tensors shaped by ``spec.input`` and ``spec.classes``
  (one smooth random template per class plus noise), for tests.
- ``cifar10`` (:mod:`.cifar10`): a local folder in the official *binary* format (``data_batch_1.bin`` ..
  ``data_batch_5.bin``, ``test_batch.bin``; records of 1 label byte + 3,072 pixel bytes) read
  as raw bytes, or the official *python* format (``data_batch_1`` .. ``data_batch_5``,
  ``test_batch``; pickles) read with :class:`RestrictedUnpickler`, which admits only the
  globals a numpy array needs. The validation split is carved from the training batches
  with ``spec.data.seed``.
- ``folder`` (:mod:`.folder`): your own images, one subfolder per class, decoded with Pillow (see
  :func:`load_folder`): ``train/`` plus ``val/`` and/or ``test/`` at the top (ImageNet's
  layout), else one folder split by ``spec.data.seed``. Classes are the sorted folder names.

Images are float32 ``[N, C, H, W]`` normalised per channel with the training split's mean and
standard deviation (an image folder: of at most 10,000 training images, kept in the artifact);
labels are int64 ``[N]``. Augmentation (:class:`Augment`) runs on whole batches with torch ops
and a ``torch.Generator``, so it is reproducible. An image folder too big for memory is a
:class:`StreamSplit`: decoded from disk batch by batch in DataLoader workers instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from cnas_ir.errors import InputError
from cnas_ir.spec import Spec

__all__ = [
    "DATASETS",
    "FOLDER_MEMORY_LIMIT",
    "RESIZED_CROP_FROM",
    "RESIZED_CROP_RATIO",
    "RESIZED_CROP_SCALE",
    "Augment",
    "Pair",
    "Split",
    "Splits",
    "carve",
    "check_data",
    "default_augment",
    "load_dataset",
    "parse_data_option",
]

DATASETS = ("digits", "synthetic", "cifar10", "folder")
_PATH_DATASETS = ("cifar10", "folder")  # the ones read from a local folder

_SYNTHETIC_SIZES = {"train": 640, "val": 160, "test": 320}
_SHAPES = {"digits": (1, 8, 10), "cifar10": (3, 32, 10)}  # channels, size, classes (synthetic: the spec's)

# Training crops of larger inputs (an image folder's).
RESIZED_CROP_FROM = 64  # input size from which training crops are random-resized (below: pad and crop)
RESIZED_CROP_SCALE = (0.08, 1.0)  # Inception's box area fractions and aspect ratios
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)

# A bigger image folder is streamed from disk (.folder).
FOLDER_MEMORY_LIMIT = 2 * 2**30  # bytes of decoded float32 images kept in memory; a bigger folder streams


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
        from .folder import FolderLayout

        _check_fits(spec, name)  # channels first: they decide nothing about the folder
        layout = FolderLayout.scan(Path(path), spec.data.seed)
        if len(layout.classes) != spec.classes:
            shown = ", ".join(layout.classes[:5]) + (", ..." if len(layout.classes) > 5 else "")
            raise InputError(
                f"{layout.root}: {len(layout.classes)} class folders ({shown}) but classes is {spec.classes} "
                f"in the spec; they must be equal"
            )
        return name, layout
    from .cifar10 import find_cifar

    found = find_cifar(Path(path))  # the folder's errors first, then the shape's
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
        from .folder import load_folder

        return load_folder(
            spec, found, stats=stats, classes=classes, workers=workers, memory_limit=memory_limit, warn=warn
        )
    seed = spec.data.seed
    if found is not None:
        from .cifar10 import cifar10

        images, labels, raw_test = cifar10(*found, seed)
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


Pair = tuple[np.ndarray, np.ndarray]


def carve(x: np.ndarray, y: np.ndarray, n_val: int, seed: int) -> tuple[Pair, Pair]:
    """Split (x, y) into (train, val) by a permutation seeded with ``seed``; val has n_val."""
    perm = np.random.default_rng(seed).permutation(len(y))
    val, train = perm[:n_val], perm[n_val:]
    return (x[train], x[val]), (y[train], y[val])


def _digits(seed: int) -> tuple[Pair, Pair, Pair]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    x = d.images.astype(np.float32)[:, None, :, :] / np.float32(16)  # [1797, 1, 8, 8], values 0..16
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test, n_val = round(0.2 * len(y)), round(0.1 * len(y))
    test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    return (x[train], x[val]), (y[train], y[val]), (x[test], y[test])


def _synthetic(channels: int, size: int, classes: int, seed: int) -> tuple[Pair, Pair, Pair]:
    """Class templates: smooth random patterns (drawn at a quarter of the resolution and
    upsampled) so convolutions and global pooling can tell them apart; images are a template
    plus Gaussian noise. Deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    coarse = max(1, size // 4)
    templates = rng.standard_normal((classes, channels, coarse, coarse))
    reps = -(-size // coarse)
    templates = np.repeat(np.repeat(templates, reps, axis=2), reps, axis=3)[:, :, :size, :size]

    def draw(n: int) -> Pair:
        y = rng.integers(0, classes, n)
        x = templates[y] + 0.8 * rng.standard_normal((n, channels, size, size))
        return x.astype(np.float32), y.astype(np.int64)

    tr, va, te = (draw(_SYNTHETIC_SIZES[s]) for s in ("train", "val", "test"))
    return (tr[0], va[0]), (tr[1], va[1]), te


if TYPE_CHECKING:
    from .folder import StreamSplit

    AnySplit = Split | StreamSplit
