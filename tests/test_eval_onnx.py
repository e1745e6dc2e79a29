"""``cnas-ir eval MODEL.onnx`` (issue 18, part 5): an exported model evaluated in onnxruntime on
the data ``eval ARTIFACT`` uses, read from the model's metadata.

The acceptance check: a small folder of generated PNG and JPEG images (a corrupt file and a
grayscale image among them) is trained on, evaluated and exported; on CPU the ONNX model's
predictions equal PyTorch's except where PyTorch's top-2 logit margin is below 1e-4, and the
two accuracies agree accordingly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from test_folder_data import folder_spec, make_folder

from cnas_ir.app.cli import main
from cnas_ir.backends.onnx.evaluate import ExportedModel, onnx_logits
from cnas_ir.backends.onnx.export import META_DATA, META_SPEC
from cnas_ir.backends.pytorch import lower
from cnas_ir.backends.pytorch.data import load_dataset
from cnas_ir.format import load
from helpers import EXAMPLES, inside
from helpers import run_cli as run

MARGIN = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, one_thread) -> Path:
    """A folder run in a fresh directory: build, train (3 epochs), export. The spec names the
    image folder by a relative path."""
    work = tmp_path_factory.mktemp("run")
    make_folder(work / "images")
    (work / "spec.json").write_text(json.dumps(folder_spec("images", epochs=3)))
    with inside(work):
        assert main(["build", "spec.json"]) == 0
        assert main(["train"]) == 0
        assert main(["export", "--onnx"]) == 0
    return work


def _torch_logits(run_dir: Path, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """The reference: PyTorch's compact module of the run's trained artifact on the split as
    eval loads it (from the run's folder, where the spec's relative data path points)."""
    with inside(run_dir):
        graph = load("cnas-run/002-train.cnas")
        data = load_dataset(graph.spec, stats=graph.data, classes=graph.data.get("classes"), warn=lambda _: None)
    s = data.split(split)
    with torch.no_grad():
        logits = lower(graph, "compact").eval()(s.images).double().numpy()
    return logits, s.labels.numpy()


def _margin(logits: np.ndarray) -> np.ndarray:
    top2 = np.sort(logits, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


@pytest.mark.parametrize("split", ["test", "train"])
def test_onnx_predictions_equal_pytorch(exported: Path, capsys: pytest.CaptureFixture[str], split: str) -> None:
    with inside(exported):  # the spec's relative data path is taken from the current folder
        model = ExportedModel.read("cnas-run/002-train.onnx")
        name, provider, batches = onnx_logits(model, split, device="cpu")
        parts = list(batches)
    capsys.readouterr()
    assert name == "folder" and provider == "CPUExecutionProvider"
    ort_logits = np.concatenate([p[0] for p in parts])
    ort_labels = np.concatenate([p[1] for p in parts])
    ref, labels = _torch_logits(exported, split)
    assert np.array_equal(ort_labels, labels) and ort_logits.shape == ref.shape
    sure = _margin(ref) >= MARGIN
    assert np.array_equal(ort_logits.argmax(1)[sure], ref.argmax(1)[sure])
    # the CLI's two reports: the accuracies agree except for images decided by < 1e-4
    code, out, err = run(["eval", "--split", split, "--json", "--device", "cpu"], exported, capsys)
    assert code == 0, err
    pt = json.loads(out)
    code, out, err = run(["eval", "cnas-run/002-train.onnx", "--split", split, "--json", "--device", "cpu"],
                         exported, capsys)  # fmt: skip
    assert code == 0, err
    ox = json.loads(out)
    n = len(labels)
    torch_correct, ort_correct = int((ref.argmax(1) == labels).sum()), int((ort_logits.argmax(1) == labels).sum())
    assert pt["n"] == ox["n"] == n and pt["data"] == ox["data"] == "folder" and ox["split"] == split
    assert round(pt["accuracy"] * n) == torch_correct and round(ox["accuracy"] * n) == ort_correct
    assert abs(ort_correct - torch_correct) <= int((~sure).sum())
    if sure.all():
        assert ox["accuracy"] == pt["accuracy"]
    assert ox["loss"] == pytest.approx(pt["loss"], rel=1e-4, abs=1e-6)
    assert len(err.strip().splitlines()) == 1 and "skipped 1 unreadable image" in err  # the corrupt file


def test_text_report_and_metadata(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["eval", "cnas-run/002-train.onnx", "--device", "cpu"], exported, capsys)
    assert code == 0 and out.startswith("cnas-run/002-train.onnx: test accuracy ") and "images of folder" in out
    props = {p.key: p.value for p in onnx.load(exported / "cnas-run" / "002-train.onnx").metadata_props}
    graph = load(exported / "cnas-run" / "002-train.cnas")
    assert props[META_SPEC] == graph.spec.to_json()
    data = json.loads(props[META_DATA])
    assert data["classes"] == ["apple", "leaf", "sky"] and data["mean"] == graph.data["mean"]
    assert len(data["std"]) == 3


def test_data_override_and_relative_path(exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = exported / "cnas-run" / "002-train.onnx"
    # elsewhere, the spec's relative "images" is not there: one line, exit 2
    code, _, err = run(["eval", str(model), "--device", "cpu"], tmp_path, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "images: no such folder" in err
    shutil.copytree(exported / "images", tmp_path / "copy")
    code, out, err = run(["eval", str(model), "--data", "folder:copy", "--device", "cpu", "--json"], tmp_path, capsys)
    assert code == 0, err
    here = json.loads(out)
    code, out, _ = run(["eval", str(model), "--device", "cpu", "--json"], exported, capsys)
    assert {k: here[k] for k in ("accuracy", "n", "loss")} == {k: json.loads(out)[k] for k in ("accuracy", "n", "loss")}


def test_export_without_metadata_is_refused(exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = onnx.load(exported / "cnas-run" / "002-train.onnx")
    del m.metadata_props[:]
    onnx.save(m, tmp_path / "old.onnx")
    code, _, err = run(["eval", str(tmp_path / "old.onnx")], exported, capsys)
    assert code == 2 and err.count("\n") == 1 and "no cnas-ir metadata" in err and "export" in err


def test_external_data_is_refused(exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = onnx.load(exported / "cnas-run" / "002-train.onnx")
    onnx.save_model(m, tmp_path / "ext.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").is_file()
    code, _, err = run(["eval", str(tmp_path / "ext.onnx")], exported, capsys)
    assert code == 2 and err.count("\n") == 1 and "external data file" in err


@pytest.mark.parametrize("content", [b"", b"\x00\x01 not a protobuf at all \xff" * 10])
def test_not_an_onnx_model(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes) -> None:
    (tmp_path / "x.onnx").write_bytes(content)
    code, _, err = run(["eval", "x.onnx"], tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1 and "x.onnx" in err
    code, _, err = run(["eval", "missing.onnx"], tmp_path, capsys)
    assert code == 2 and "no such ONNX model" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_cuda_refused_without_a_gpu(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["eval", "cnas-run/002-train.onnx", "--device", "cuda"], exported, capsys)
    assert code == 2 and err.count("\n") == 1 and "--device cuda" in err


def test_builtin_data_set(tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread) -> None:
    """The digits model: its normalisation is recomputed, as eval ARTIFACT does."""
    assert run(["build", str(EXAMPLES / "tiny.yaml")], tmp_path, capsys)[0] == 0
    assert run(["train", "--epochs", "1"], tmp_path, capsys)[0] == 0
    assert run(["export", "--onnx"], tmp_path, capsys)[0] == 0
    code, out, err = run(["eval", "--json", "--device", "cpu"], tmp_path, capsys)
    assert code == 0, err
    pt = json.loads(out)
    code, out, err = run(["eval", "cnas-run/002-train.onnx", "--json", "--device", "cpu"], tmp_path, capsys)
    assert code == 0, err
    ox = json.loads(out)
    ref, labels = _torch_logits(tmp_path)
    unsure = int((_margin(ref) < MARGIN).sum())
    assert ox["data"] == "digits" and ox["n"] == pt["n"] == len(labels)
    assert abs(ox["accuracy"] - pt["accuracy"]) * len(labels) <= unsure + 1e-9
    assert ox["loss"] == pytest.approx(pt["loss"], rel=1e-4)


def test_metadata_that_does_not_fit_the_model(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = onnx.load(exported / "cnas-run" / "002-train.onnx")
    props = {p.key: p.value for p in m.metadata_props}
    spec = json.loads(props[META_SPEC])
    spec["input"]["channels"] = 1  # the model takes 3 channels
    data = json.loads(props[META_DATA])
    data["mean"], data["std"] = data["mean"][:1], data["std"][:1]
    onnx.helper.set_model_props(m, {**props, META_SPEC: json.dumps(spec), META_DATA: json.dumps(data)})
    onnx.save(m, exported / "cnas-run" / "grey.onnx")
    code, _, err = run(["eval", "cnas-run/grey.onnx", "--device", "cpu"], exported, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("cnas-ir: error: cnas-run/grey.onnx: onnxruntime failed on the data")
    assert len(lines) == 2  # the warning about the corrupt file, then the error
