"""Your own images (issue 18, part 4): ``data: {name: folder, path: DIR}``.

Folders of generated PNG and JPEG images (a grayscale one, an RGBA one, a corrupt file among
them) in tmp_path: layouts and splits, decoding and normalisation, the one warning line, the
one-line errors, streaming from disk against decoding into memory, training, the class names
and statistics kept in the artifact, and the version-1 artifact format.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnas_ir
from cnas_ir.app.cli import main
from cnas_ir.backends.pytorch.data import Augment, Split, load_dataset, parse_data_option
from cnas_ir.backends.pytorch.folder import FolderLayout, StreamSplit
from cnas_ir.backends.pytorch.train import eval_batches, evaluate, train
from cnas_ir.errors import InputError
from cnas_ir.format import FORMAT_VERSION, load, save, to_bytes
from cnas_ir.spec import parse_spec

COLOURS = {"apple": (200, 40, 40), "leaf": (40, 180, 60), "sky": (50, 60, 220)}


def make_folder(root: Path, per_class: int = 12, seed: int = 0, corrupt: bool = True) -> Path:
    """Noisy images of one colour per class, alternately PNG and JPEG of assorted sizes, plus
    a grayscale PNG and an RGBA PNG in the first class and (``corrupt``) a broken JPEG in the
    second. Returns ``root``."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            w, h = int(rng.integers(14, 40)), int(rng.integers(14, 40))
            a = np.clip(np.array(colour)[None, None, :] + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
            if k % 2:
                Image.fromarray(a).save(d / f"img{k:02d}.png")
            else:
                Image.fromarray(a).save(d / f"img{k:02d}.jpg", quality=92)
    first, second = list(COLOURS)[:2]
    Image.fromarray(np.full((24, 30), 140, np.uint8), "L").save(root / first / "grey.png")
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = COLOURS[first], 7  # nearly transparent: alpha must be dropped
    Image.fromarray(rgba, "RGBA").save(root / first / "alpha.png")
    (root / first / "notes.txt").write_text("not an image: ignored")
    if corrupt:
        (root / second / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"this is no jpeg" * 20)
    return root


def folder_spec(path: Path | str, size: int = 16, channels: int = 3, classes: int = 3, **train) -> dict:
    recipe = {"epochs": 2, "batch_size": 16, "lr": 0.05, "t0": 2, "t_mul": 2, "seed": 0, **train}
    return {
        "name": "tiny-folder",
        "space": "nasnet",
        "input": {"channels": channels, "size": size},
        "classes": classes,
        "nasnet": {"channels": 4, "stacks": 2, "cells_per_stack": 1, "nodes_per_cell": 2, "ops_per_node": 2,
                   "stem_multiplier": 2, "spatial_dropout": 0.0},
        "data": {"name": "folder", "path": str(path), "seed": 0},
        "train": recipe,
    }  # fmt: skip


def _solid(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 30)) -> None:
    Image.fromarray(np.full((size[1], size[0], 3), colour, np.uint8)).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("images"))


# ---- layout and splits ---------------------------------------------------------------------------


def test_one_folder_is_split_per_class_by_seed(folder: Path) -> None:
    layout = FolderLayout.scan(folder, seed=0)
    assert layout.classes == ("apple", "leaf", "sky")  # sorted folder names
    for c, name in enumerate(layout.classes):
        on_disk = sorted(str(p) for p in (folder / name).iterdir() if p.suffix in (".png", ".jpg"))
        parts = {s: [f for f, y in zip(layout.files[s], layout.labels[s], strict=True) if y == c] for s in layout.files}
        assert sorted(parts["train"] + parts["val"] + parts["test"]) == on_disk  # all, once, under their class
        n = len(on_disk)
        assert (len(parts["val"]), len(parts["test"])) == (round(0.1 * n), round(0.2 * n))
    again, other = FolderLayout.scan(folder, seed=0), FolderLayout.scan(folder, seed=1)
    assert again.files == layout.files and other.files["test"] != layout.files["test"]


def test_imagenet_layout(tmp_path: Path) -> None:
    for split, n in (("train", 10), ("val", 3)):
        for name in ("b", "a"):
            (tmp_path / split / name).mkdir(parents=True)
            for k in range(n):
                _solid(tmp_path / split / name / f"{k}.png", (k, 0, 0))
    layout = FolderLayout.scan(tmp_path, seed=0)
    assert layout.classes == ("a", "b")
    # val/ alone is the test split; the validation split is carved from train/ (10% per class).
    assert sorted(layout.files["test"]) == sorted(str(p) for p in (tmp_path / "val").rglob("*.png"))
    assert len(layout.files["val"]) == 2 and not set(layout.files["val"]) & set(layout.files["train"])
    assert sorted(layout.files["train"] + layout.files["val"]) == sorted(
        str(p) for p in (tmp_path / "train").rglob("*.png")
    )
    # with test/ as well, the folders are the splits
    for name in ("a", "b"):
        (tmp_path / "test" / name).mkdir(parents=True)
        _solid(tmp_path / "test" / name / "t.png", (0, 0, 0))
    layout = FolderLayout.scan(tmp_path, seed=0)
    assert len(layout.files["train"]) == 20 and len(layout.files["val"]) == 6 and len(layout.files["test"]) == 2
    assert list(layout.labels["test"]) == [0, 1]
    (tmp_path / "test" / "c").mkdir()
    with pytest.raises(InputError, match=r"test/c: class folder that train/ does not have"):
        FolderLayout.scan(tmp_path, seed=0)


# ---- decoding, normalisation, the warning -------------------------------------------------------


def test_decoding_and_statistics_of_training_images(tmp_path: Path) -> None:
    # solid colours: every crop and resize of an image is its colour, so the statistics and
    # the normalised pixels follow from the colours alone.
    train_colours = {"a": [(10, 20, 30), (250, 0, 100)], "b": [(90, 90, 90)]}
    for name, colours in train_colours.items():
        for split in ("train", "val", "test"):
            (tmp_path / split / name).mkdir(parents=True)
        for k, colour in enumerate(colours):
            _solid(tmp_path / "train" / name / f"{k}.png", colour)
        _solid(tmp_path / "val" / name / "v.png", (255, 255, 255))  # val/test must not enter the stats
        Image.fromarray(np.full((17, 9), 60, np.uint8), "L").save(tmp_path / "test" / name / "grey.png")
    rgb = np.array([c for cs in train_colours.values() for c in cs], np.float64) / 255
    mean, std = rgb.mean(0), rgb.std(0)
    spec = parse_spec(folder_spec(tmp_path, size=8, classes=2))
    s = load_dataset(spec)
    np.testing.assert_allclose(s.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(s.std, std, rtol=1e-12)
    assert isinstance(s.test, Split) and s.test.images.shape == (2, 3, 8, 8)
    grey = (60 / 255 - mean) / std  # grayscale decoded to RGB: the same value in each channel
    expected = np.broadcast_to(grey[:, None, None], (3, 8, 8))
    np.testing.assert_allclose(s.test.images[0].numpy(), expected, rtol=1e-5)  # every pixel
    # one channel: L conversion (ITU-R 601-2 luma, rounded) of the same colours
    luma = np.array([round((299 * r + 587 * g + 114 * b) / 1000) for r, g, b in (c for cs in train_colours.values()
                                                                              for c in cs)]) / 255  # fmt: skip
    s1 = load_dataset(parse_spec(folder_spec(tmp_path, size=8, channels=1, classes=2)))
    assert s1.train.images.shape[1] == 1
    np.testing.assert_allclose(s1.mean, [luma.mean()], atol=1 / 255)


def test_corrupt_file_is_skipped_with_one_warning(folder: Path) -> None:
    lines: list[str] = []
    spec = parse_spec(folder_spec(folder))
    s = load_dataset(spec, warn=lines.append)
    images = [p for p in folder.rglob("*") if p.suffix in (".png", ".jpg")]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "skipped 1 unreadable image(s) of " + str(len(images)) in lines[0] and "broken.jpg" in lines[0]
    assert len(s.train) + len(s.val) + len(s.test) == len(images) - 1
    # the grayscale and the RGBA image are in (alpha dropped: the RGBA image is its colour)
    assert s.classes == ("apple", "leaf", "sky")


def test_warning_line_on_stderr(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    load_dataset(parse_spec(folder_spec(folder)))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cnas-ir: warning: ") and "broken.jpg" in err[0]


def test_rgba_alpha_is_dropped(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for name, colour in (("x", (200, 40, 40)), ("y", (10, 10, 10))):
            (tmp_path / split / name).mkdir(parents=True)
            rgba = np.zeros((12, 12, 4), np.uint8)
            rgba[..., :3], rgba[..., 3] = colour, 0  # fully transparent
            Image.fromarray(rgba, "RGBA").save(tmp_path / split / name / "a.png")
            _solid(tmp_path / split / name / "b.png", colour)
    s = load_dataset(parse_spec(folder_spec(tmp_path, size=8, classes=2)))
    x = s.test.images
    assert torch.equal(x[0], x[1]) and torch.equal(x[2], x[3])  # transparent = opaque of the same colour


def test_decompression_bomb_check_stays_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for k in range(3):
            _solid(tmp_path / name / f"{k}.png", (k, 0, 0), size=(8, 8))
    _solid(tmp_path / "a" / "huge.png", (0, 0, 0), size=(40, 40))  # 1,600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)  # Pillow refuses above twice the limit
    lines: list[str] = []
    s = load_dataset(parse_spec(folder_spec(tmp_path, size=8, classes=2)), warn=lines.append)
    assert len(s.train) + len(s.val) + len(s.test) == 6
    assert len(lines) == 1 and "huge.png: DecompressionBombError" in lines[0]


# ---- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: {**d, "classes": 4}, "3 class folders (apple, leaf, sky) but classes is 4"),
        (lambda d: {**d, "input": {"channels": 4, "size": 16}}, "input.channels is 4"),
        (lambda d: {**d, "data": {"name": "folder", "path": "/nonexistent/im"}}, "/nonexistent/im: no such folder"),
        (lambda d: {**d, "data": {"name": "folder"}}, "data.path: the folder data set needs a local folder"),
    ],
)  # fmt: skip
def test_bad_folder_or_spec_is_one_line(folder: Path, change, needle: str) -> None:
    with pytest.raises(InputError, match=re.escape(needle)) as e:
        load_dataset(parse_spec(change(folder_spec(folder))))
    assert "\n" not in str(e.value)


def test_empty_class_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _solid(tmp_path / "a" / "1.png", (1, 2, 3))
    (tmp_path / "b" / "readme.txt").write_text("no images")
    with pytest.raises(InputError, match=r"/b: empty class folder"):
        load_dataset(parse_spec(folder_spec(tmp_path, classes=2)))


def test_data_option() -> None:
    assert parse_data_option("folder:photos/x") == ("folder", "photos/x")
    with pytest.raises(InputError, match="only cifar10 and folder read a folder"):
        parse_data_option("digits:/x")


def test_cli_errors_are_one_line(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps(folder_spec(folder, classes=4)))
    art = tmp_path / "a.cnas"
    assert main(["build", str(spec), "-o", str(art)]) == 0
    capsys.readouterr()
    assert main(["--run-dir", str(tmp_path / "run"), "train", str(art), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "but classes is 4 in the spec" in err[0]


def test_help_shows_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    for args, needles in (
        (["--help"], ["--data folder:photos", "eval cnas-run/004-train.onnx"]),
        (["train", "--help"], ["--workers", "folder:DIR", "cnas-ir train --data folder:photos --workers 8"]),
        (["eval", "--help"], ["--workers", "MODEL.onnx", "cnas-ir eval cnas-run/004-train.onnx"]),
        (["prune", "--help"], ["--workers"]),
    ):
        assert main(args) == 0
        out = capsys.readouterr().out
        assert all(n in out for n in needles), (args, out)


# ---- streaming from disk ------------------------------------------------------------------------


def test_streamed_folder_gives_the_same_images(folder: Path) -> None:
    spec = parse_spec(folder_spec(folder))
    quiet: list[str] = []
    mem = load_dataset(spec, warn=quiet.append)
    disk = load_dataset(spec, memory_limit=0, warn=quiet.append)
    assert isinstance(disk.train, StreamSplit) and isinstance(mem.train, Split)
    assert disk.mean == mem.mean and disk.std == mem.std and len(quiet) == 2
    for s in ("train", "val", "test"):
        a, b = mem.split(s), disk.split(s)
        assert torch.equal(a.labels, b.labels)
        got = torch.cat([x for x, _ in eval_batches(b, batch_size=7)])
        assert torch.equal(got, a.images)  # the same decoding and evaluation crop, bit for bit
    idx = torch.tensor([3, 0, 5])
    assert torch.equal(disk.train.images[idx], mem.train.images[idx])


def test_streamed_augmentation_is_the_same_in_workers(folder: Path) -> None:
    spec = parse_spec(folder_spec(folder, size=64))  # random-resized crops from 64 pixels
    disk = load_dataset(spec, memory_limit=0, workers=0, warn=lambda _: None)
    assert disk.augment == Augment(flip=True, resized_crop=True)
    batches = [[4, 1, 7], [0, 2]]
    one = [x for x, _ in disk.train.batches(batches, augment=disk.augment, seed=11)]
    workers = StreamSplit(*[getattr(disk.train, f) for f in ("files", "labels", "channels", "size", "mean", "std")], 2)
    two = [x for x, _ in workers.batches(batches, augment=disk.augment, seed=11)]
    other = [x for x, _ in disk.train.batches(batches, augment=disk.augment, seed=12)]
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))
    assert not torch.equal(one[0], other[0])
    crops = torch.cat([x for x, _ in eval_batches(disk.train)])[[4, 1, 7]]
    assert one[0].shape == crops.shape and not torch.equal(one[0], crops)


def test_resized_crop_on_a_batch() -> None:
    x = torch.linspace(-1, 1, 64).expand(5, 3, 64, 64).contiguous()  # a horizontal ramp
    aug = Augment(resized_crop=True)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b)
    assert float(a.min()) >= -1 - 1e-6 and float(a.max()) <= 1 + 1e-6  # interpolation stays in range
    assert not torch.allclose(a, x)
    # a crop of a ramp is a ramp: rows stay equal and columns increase
    assert torch.allclose(a[:, :, :1, :].expand_as(a), a, atol=1e-6)
    assert bool((a[..., 1:] >= a[..., :-1] - 1e-6).all())


def test_streamed_training_matches_itself_and_learns(folder: Path, one_thread) -> None:
    g = cnas_ir.build(folder_spec(folder, epochs=2))
    disk = load_dataset(g.spec, memory_limit=0, workers=0, warn=lambda _: None)
    a = train(g, data=disk, device="cpu", progress=False)
    b = train(g, data=disk, device="cpu", progress=False)
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert a.data == {"name": "folder", "mean": list(disk.mean), "std": list(disk.std), "classes": list(disk.classes)}
    res = evaluate(a, "test", data=disk, device="cpu")
    assert res["n"] == len(disk.test)


# ---- the artifact keeps class names and statistics ------------------------------------------------


def test_artifact_keeps_classes_and_statistics(tmp_path: Path, one_thread) -> None:
    root = make_folder(tmp_path / "images", corrupt=False)
    g = cnas_ir.build(folder_spec(root, epochs=1))
    data = load_dataset(g.spec)
    trained = train(g, data=data, device="cpu", progress=False)
    path = save(trained, tmp_path / "t.cnas")
    back = load(path)
    assert back.data["classes"] == ["apple", "leaf", "sky"]
    assert back.data["mean"] == list(data.mean) and back.data["std"] == list(data.std)
    # More (brighter) training images change what fresh statistics would be; evaluation keeps
    # normalising with the stored ones.
    for k in range(6):
        _solid(root / "sky" / f"bright{k}.png", (255, 255, 255))
    fresh = load_dataset(back.spec)
    assert fresh.mean != data.mean
    kept = load_dataset(back.spec, stats=back.data, classes=back.data["classes"])
    assert kept.mean == data.mean and kept.std == data.std
    assert evaluate(back, "test", device="cpu")["n"] == len(kept.test)
    (root / "zebra").mkdir()  # a folder of other classes is refused for this network
    _solid(root / "zebra" / "z.png", (0, 0, 0))
    spec4 = back.spec.model_copy(update={"classes": 4})
    with pytest.raises(InputError, match="not the classes the network was trained on"):
        load_dataset(spec4, stats=back.data, classes=back.data["classes"])


def _zip(members: dict[str, bytes], version: int) -> bytes:
    manifest = {
        "format": "cnas-ir",
        "version": version,
        "producer": "cnas-ir 0.1.0",
        "members": {n: hashlib.sha256(d).hexdigest() for n, d in members.items()},
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("cnas.json", json.dumps(manifest))
        for n, d in members.items():
            z.writestr(n, d)
    return buf.getvalue()


def test_version_1_artifact_still_loads(tmp_path: Path) -> None:
    assert FORMAT_VERSION == 2
    g = cnas_ir.build(folder_spec(tmp_path))
    with zipfile.ZipFile(io.BytesIO(to_bytes(g))) as z:
        members = {n: z.read(n) for n in z.namelist() if n != "cnas.json"}
    assert json.loads(members["data.json"]) == {}
    old = {n: d for n, d in members.items() if n != "data.json"}  # the version-1 layout
    (tmp_path / "v1.cnas").write_bytes(_zip(old, 1))
    back = load(tmp_path / "v1.cnas")
    assert back.data == {} and back.spec == g.spec and np.array_equal(back.alive, g.alive)
    # version 2 requires data.json, and checks it
    (tmp_path / "v2.cnas").write_bytes(_zip(old, 2))
    with pytest.raises(InputError, match="member data.json is missing"):
        load(tmp_path / "v2.cnas")
    bad = {**old, "data.json": json.dumps({"name": "folder", "mean": [0.5], "std": [0.2]}).encode()}
    (tmp_path / "bad.cnas").write_bytes(_zip(bad, 2))
    with pytest.raises(InputError, match="data.json: mean must be 3 finite numbers"):
        load(tmp_path / "bad.cnas")


def test_streamed_training_equals_training_in_memory(folder: Path, one_thread) -> None:
    # Without augmentation a streamed epoch decodes the very images kept in memory, in the same
    # seeded order: the two runs are the same computation.
    g = cnas_ir.build(folder_spec(folder, epochs=2, batch_size=7))
    quiet: list[str] = []
    mem = load_dataset(g.spec, warn=quiet.append)
    disk = load_dataset(g.spec, memory_limit=0, warn=quiet.append)
    a = train(g, data=mem, augment=Augment(), device="cpu", progress=False)
    b = train(g, data=disk, augment=Augment(), device="cpu", progress=False)
    assert a.weights.keys() == b.weights.keys()
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)


def test_shard_sampler_follows_the_distributed_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from cnas_ir.backends.pytorch import distributed
    from cnas_ir.backends.pytorch.folder import ShardSampler

    order = torch.tensor([4, 0, 3, 1, 2])
    shards = []
    for r in range(2):
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        sampler = ShardSampler(order)
        shards.append(list(sampler))
        assert len(sampler) == 3
    # padded to 6 with the first entry, then every second entry from the rank
    assert shards == [[4, 3, 2], [0, 1, 4]]


def test_training_with_resized_crops_in_memory_is_reproducible(folder: Path, one_thread) -> None:
    # (the default from 64 pixels; forced here on 16-pixel images to keep the network small)
    g = cnas_ir.build(folder_spec(folder, epochs=1))
    mem = load_dataset(g.spec, warn=lambda _: None)
    aug = Augment(flip=True, resized_crop=True)
    a = train(g, data=mem, augment=aug, device="cpu", progress=False)
    b = train(g, data=mem, augment=aug, device="cpu", progress=False)
    c = train(g, data=mem, augment=Augment(flip=True), device="cpu", progress=False)
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert not all(np.array_equal(a.weights[k], c.weights[k]) for k in a.weights)


# ---- under torchrun: a DistributedSampler over the streamed folder ----------------------------------


def _worker(folder: Path, out: Path) -> None:
    """torchrun's worker (2 CPU processes, gloo): the folder trained from memory and streamed
    (no augmentation: the same images in the same shards), and streamed with its augmentation."""
    from cnas_ir.backends.pytorch import distributed

    torch.set_num_threads(1)
    with distributed.process_group(torch.device("cpu")):
        g = cnas_ir.build(folder_spec(folder, epochs=2, batch_size=8))
        mem = load_dataset(g.spec, warn=lambda _: None)
        disk = load_dataset(g.spec, memory_limit=0, workers=0, warn=lambda _: None)
        runs = {
            "mem": train(g, data=mem, augment=Augment(), device="cpu", progress=False),
            "disk": train(g, data=disk, augment=Augment(), device="cpu", progress=False),
            "aug": train(g, data=disk, device="cpu", progress=False),
        }
        res = {f"{run}.{k}": v for run, t in runs.items() for k, v in t.weights.items()}
        np.savez(out / f"rank{distributed.rank()}.npz", **res)


def test_streamed_folder_under_torchrun(folder: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__,
           str(folder), str(tmp_path)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r0, r1 = (dict(np.load(tmp_path / f"rank{r}.npz")) for r in (0, 1))
    assert r0.keys() == r1.keys() and any(k.startswith("aug.") for k in r0)
    for k in r0:
        assert r0[k].tobytes() == r1[k].tobytes(), k  # every rank ends with the same weights
        if k.startswith("disk."):  # streamed through the sampler = the same shards in memory
            assert r0[k].tobytes() == r0["mem." + k.removeprefix("disk.")].tobytes(), k


if __name__ == "__main__":  # torchrun's worker: test_folder_data.py FOLDER OUT
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
