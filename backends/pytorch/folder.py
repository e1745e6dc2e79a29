"""Your own images (``data: {name: folder, path: DIR}``): one subfolder per class, decoded with
Pillow, kept in memory as tensors when they fit, else streamed from disk through DataLoader
workers (:class:`StreamSplit`). See :func:`load_folder`.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cnas_ir.errors import InputError, RunFailure
from cnas_ir.spec import Spec

from . import distributed
from .data import FOLDER_MEMORY_LIMIT, RESIZED_CROP_RATIO, RESIZED_CROP_SCALE, Augment, Split, Splits, default_augment

__all__ = ["AnySplit", "FolderLayout", "ShardSampler", "StreamSplit", "load_folder"]

_EVAL_CROP = 0.875  # evaluation: shorter side to size / 0.875, centre crop of size
_STATS_IMAGES = 10_000  # training images the normalisation statistics are taken from, at most
_VAL_FRACTION, _VAL_PER_CLASS = 0.1, 50  # validation carved from train/: 10% of a class, 50 at most
_TEST_FRACTION = 0.2  # a single folder: 20% test, 10% val, the rest train (per class)
# Formats decoded, by file extension and by Pillow plugin: common raster formats only (never
# EPS/PDF, which Pillow hands to Ghostscript).
_IMAGE_EXTENSIONS = frozenset(".jpg .jpeg .jpe .jfif .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .tga".split())
_PIL_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM", "TGA")


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
