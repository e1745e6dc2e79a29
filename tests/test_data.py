"""Datasets (SPEC §8): digits, synthetic, CIFAR-10 from local binary/python files, augmentation."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cnas_ir.backends.pytorch.cifar10 import RestrictedUnpickler
from cnas_ir.backends.pytorch.data import Augment, default_augment, load_dataset, parse_data_option
from cnas_ir.errors import InputError
from cnas_ir.spec import Spec, parse_spec

N_PER_BATCH = 20  # records per tiny CIFAR-10 batch file


def _spec(name: str = "digits", channels: int = 1, size: int = 8, classes: int = 10, **data: Any) -> Spec:
    return parse_spec(
        {
            "name": "t",
            "input": {"channels": channels, "size": size},
            "classes": classes,
            "data": {"name": name, **data},
        }
    )


# ---- digits and synthetic --------------------------------------------------------------------


def test_digits_shapes_and_split() -> None:
    d = load_dataset(_spec())
    assert (len(d.train), len(d.val), len(d.test)) == (1258, 180, 359)  # 70/10/20 of 1,797
    for s in (d.train, d.val, d.test):
        assert s.images.dtype == torch.float32 and s.images.shape[1:] == (1, 8, 8)
        assert s.labels.dtype == torch.int64 and set(s.labels.unique().tolist()) <= set(range(10))
    # normalised with the training split's statistics
    assert abs(float(d.train.images.mean())) < 1e-4 and abs(float(d.train.images.std()) - 1) < 1e-3
    assert d.augment == Augment()  # a flipped or shifted 8x8 digit is another glyph


def test_digits_split_is_deterministic_per_seed() -> None:
    a, b, c = load_dataset(_spec(seed=0)), load_dataset(_spec(seed=0)), load_dataset(_spec(seed=1))
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.test.labels, c.test.labels)


def test_data_must_fit_the_spec() -> None:
    with pytest.raises(InputError, match=r"input.channels is 3.*input.size is 32.*classes is 7"):
        load_dataset(_spec(channels=3, size=32, classes=7))


def test_synthetic_follows_the_spec() -> None:
    spec = _spec("synthetic", channels=3, size=12, classes=4, seed=5)
    a, b = load_dataset(spec), load_dataset(spec)
    assert a.train.images.shape == (640, 3, 12, 12) and int(a.train.labels.max()) == 3
    assert torch.equal(a.val.images, b.val.images)


def test_data_option() -> None:
    assert parse_data_option("digits") == ("digits", None)
    assert parse_data_option("cifar10:/some/where") == ("cifar10", "/some/where")
    for bad in ("mnist", "digits:/x", "cifar10:"):
        with pytest.raises(InputError, match="--data"):
            parse_data_option(bad)


# ---- CIFAR-10 from local files ---------------------------------------------------------------

_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _tiny_cifar(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        b: (rng.integers(0, 256, (N_PER_BATCH, 3072), dtype=np.uint8), rng.integers(0, 10, N_PER_BATCH))
        for b in _BATCHES
    }


def _write_bin(folder: Path, batches: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for b, (x, y) in batches.items():
        rec = np.concatenate([y.astype(np.uint8)[:, None], x], axis=1)
        (folder / f"{b}.bin").write_bytes(rec.tobytes())
    return folder


def _write_py(folder: Path, batches: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for b, (x, y) in batches.items():
        # Like the official files: a dict with bytes keys, labels a list, protocol 2.
        doc = {b"batch_label": b.encode(), b"labels": [int(v) for v in y], b"data": x,
               b"filenames": [f"{i}.png".encode() for i in range(len(y))]}  # fmt: skip
        (folder / b).write_bytes(pickle.dumps(doc, protocol=2))
    return folder


def _cifar_spec(path: Path | None = None) -> Spec:
    return _spec("cifar10", channels=3, size=32, path=None if path is None else str(path))


def _raw(split: Any, d: Any) -> np.ndarray:
    """Undo the normalisation: pixel bytes back from the float images."""
    mean = torch.tensor(d.mean).view(1, -1, 1, 1)
    std = torch.tensor(d.std).view(1, -1, 1, 1)
    return np.rint(((split.images.double() * std + mean) * 255).numpy()).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["bin", "py"])
def test_cifar10_local_formats(tmp_path: Path, fmt: str) -> None:
    batches = _tiny_cifar()
    folder = (_write_bin if fmt == "bin" else _write_py)(tmp_path / f"cifar-10-batches-{fmt}", batches)
    d = load_dataset(_cifar_spec(folder))
    assert (len(d.train), len(d.val), len(d.test)) == (90, 10, 20)  # val carved from the 100 train records
    assert d.train.images.shape[1:] == (3, 32, 32) and d.augment == default_augment("cifar10", 32)
    x, y = batches["test_batch"]
    assert np.array_equal(_raw(d.test, d), x.reshape(-1, 3, 32, 32))
    assert np.array_equal(d.test.labels.numpy(), y)
    # The parent folder works too, and both formats of the same data load identically.
    e = load_dataset(_cifar_spec(tmp_path))
    assert torch.equal(d.train.images, e.train.images)


def test_cifar10_binary_and_python_agree(tmp_path: Path) -> None:
    batches = _tiny_cifar(3)
    a = load_dataset(_cifar_spec(_write_bin(tmp_path / "b", batches)))
    b = load_dataset(_cifar_spec(_write_py(tmp_path / "p", batches)))
    for s in ("train", "val", "test"):
        assert torch.equal(a.split(s).images, b.split(s).images) and torch.equal(a.split(s).labels, b.split(s).labels)


def test_cifar10_override_path(tmp_path: Path) -> None:
    folder = _write_bin(tmp_path / "c", _tiny_cifar())
    d = load_dataset(_spec(channels=3, size=32), "cifar10", str(folder))
    assert d.name == "cifar10" and len(d.test) == N_PER_BATCH


class _Evil:
    """Unpickling this would run ``call(*args)``."""

    def __init__(self, call: Any, args: tuple[Any, ...]) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.call, self.args)


@pytest.mark.parametrize("how", ["os.system", "builtins.eval", "builtins.exec"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path, how: str) -> None:
    folder = _write_py(tmp_path / "cifar", _tiny_cifar())
    marker = tmp_path / "pwned"
    payload = {
        "os.system": _Evil(os.system, (f"touch {marker}",)),
        "builtins.eval": _Evil(eval, (f"open({str(marker)!r}, 'w')",)),
        "builtins.exec": _Evil(exec, (f"open({str(marker)!r}, 'w')",)),
    }[how]
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": payload, b"labels": []}, protocol=2))
    # Protocol 2 spells builtins the Python 2 way (__builtin__); os.system lives in posix.
    global_name = {"os.system": f"{os.system.__module__}.system"}.get(how, how)
    global_name = global_name.replace("builtins.", r"(__builtin__|builtins)\.")
    with pytest.raises(InputError, match=rf"data_batch_2: refused to unpickle global {global_name}"):
        load_dataset(_cifar_spec(folder))
    assert not marker.exists()


def test_restricted_unpickler_admits_only_arrays(tmp_path: Path) -> None:
    import io

    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    for proto in (2, 4, 5):
        out = RestrictedUnpickler(io.BytesIO(pickle.dumps({"a": arr, "n": [np.int64(3)]}, protocol=proto)), "x").load()
        assert np.array_equal(out["a"], arr)
    with pytest.raises(InputError, match="refused to unpickle global pathlib"):
        RestrictedUnpickler(io.BytesIO(pickle.dumps(tmp_path)), "x").load()


def test_cifar10_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no CIFAR-10 folder here.*downloads nothing") as e:
        load_dataset(_cifar_spec(tmp_path / "nowhere"))
    assert "\n" not in str(e.value) and str(tmp_path / "nowhere") in str(e.value)
    with pytest.raises(InputError, match="data.path"):
        load_dataset(_cifar_spec(None))
    with pytest.raises(InputError, match="no CIFAR-10 batches"):
        load_dataset(_cifar_spec(tmp_path))


def test_cifar10_wrong_file_size_and_missing_batch(tmp_path: Path) -> None:
    folder = _write_bin(tmp_path / "c", _tiny_cifar())
    with open(folder / "data_batch_3.bin", "ab") as f:
        f.write(b"\0" * 7)
    with pytest.raises(InputError, match=r"data_batch_3\.bin: size 61,467 bytes is not a whole number"):
        load_dataset(_cifar_spec(folder))
    (folder / "test_batch.bin").unlink()
    with pytest.raises(InputError, match=r"test_batch\.bin: missing"):
        load_dataset(_cifar_spec(folder))


def test_cifar10_python_batch_with_wrong_shape(tmp_path: Path) -> None:
    folder = _write_py(tmp_path / "c", _tiny_cifar())
    doc = {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}
    (folder / "data_batch_4").write_bytes(pickle.dumps(doc, protocol=2))
    with pytest.raises(InputError, match=r"data_batch_4: key 'data' must be a uint8 array \[N, 3072\]"):
        load_dataset(_cifar_spec(folder))
    (folder / "data_batch_4").write_bytes(b"\x80\x02garbage")
    with pytest.raises(InputError, match="data_batch_4: not a CIFAR-10 python batch"):
        load_dataset(_cifar_spec(folder))


# ---- augmentation ------------------------------------------------------------------------------


def test_augment_is_reproducible_and_shape_preserving() -> None:
    x = torch.randn(16, 3, 32, 32)
    aug = Augment(crop_pad=4, flip=True, cutout=8)
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(Augment()(x, torch.Generator()), x)


def test_augment_pieces() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    flipped = Augment(flip=True)(x, torch.Generator().manual_seed(0))
    for i in range(2):  # each image is either itself or its mirror
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))
    crop = Augment(crop_pad=1)(x, torch.Generator().manual_seed(0))
    for i in range(2):  # a shifted window of the zero-padded image
        padded = torch.nn.functional.pad(x[i], (1, 1, 1, 1))
        assert any(torch.equal(crop[i], padded[:, dy : dy + 4, dx : dx + 4]) for dy in range(3) for dx in range(3))
    cut = Augment(cutout=2)(x, torch.Generator().manual_seed(0))
    zeros = (cut == 0).sum(dim=(1, 2, 3))
    assert torch.all((zeros >= 1) & (zeros <= 4))  # a 2x2 hole, clipped at the border
