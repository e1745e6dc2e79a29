"""The ImageNet stem and `transfer`: a searched network's cells in another macro-architecture (issue 18).

Expected numbers come from the stem's definition in the issue (three stride-2 3x3 convs,
in -> ceil(S/2) -> S -> S with S = stem_multiplier x C, BatchNorm after each) and from the
source graph's own per-cell columns, which a transfer must not change.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_onnx import random_prune, with_weights

from cnas_ir.backends.onnx import export
from cnas_ir.backends.onnx.export import initial_weights
from cnas_ir.backends.pytorch import lower, to_graph
from cnas_ir.errors import InputError
from cnas_ir.ir import Edge, Graph, Kind
from cnas_ir.passes.build import build_graph
from cnas_ir.passes.prune import prune_to_rho, random_saliency
from cnas_ir.passes.stats import compute_stats
from cnas_ir.passes.transfer import keep_weights, transfer
from cnas_ir.spec import Spec, load_spec, parse_spec
from cnas_ir.weights import weight_table

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"channels": 4, "stacks": 2, "cells_per_stack": 1, "nodes_per_cell": 3, "ops_per_node": 2}


def spec(size: int = 8, classes: int = 10, stem: str = "cifar", **nas: object) -> Spec:
    n = SMALL | {"stem": stem, "spatial_dropout": 0.0} | nas
    return parse_spec({"name": f"{stem}-{size}", "input": {"size": size}, "classes": classes, "nasnet": n})


def half(r: int) -> int:
    return math.ceil(r / 2)  # a stride-2 3x3 conv with padding 1


# ---- the ImageNet stem in the IR -----------------------------------------------------------------


def test_paper_imagenet_stem_groups_resolutions_and_costs() -> None:
    g = build_graph(load_spec(EXAMPLES / "nasnet-imagenet.yaml"))
    s = 3 * 36
    stems = np.flatnonzero(g.kind == Kind.STEM)
    assert [int(g.size[i]) for i in stems] == [s // 2, s, s]
    assert [int(g.res[i]) for i in stems] == [112, 56, 28]
    assert g.stem_group == stems[-1]
    first, second = g.cells[0], g.cells[1]
    assert first.res == 28 and [c.res for c in g.cells if c.kind == "reduction"] == [14, 7]
    # cell 1 reads a = the second conv's output (56x56: a factorized reduce) and b = the stem
    a, b = first.inputs
    into = {int(g.bundle_dst[e]): (int(g.bundle_src[e]), Edge(int(g.bundle_kind[e]))) for e in range(g.num_bundles)}
    assert into[a] == (stems[1], Edge.IDENTITY) and into[b] == (stems[2], Edge.IDENTITY)
    assert into[first.d[0]][1] == Edge.FACTORIZED_REDUCE and into[first.d[1]][1] == Edge.PREPROCESS
    assert into[second.inputs[0]] == (stems[2], Edge.IDENTITY) and into[second.inputs[1]] == (first.c, Edge.IDENTITY)
    # The stem's parameters and multiply-adds by hand: conv weights, BN gamma and beta.
    widths, res = [3, s // 2, s, s], [112, 56, 28]
    stem_params = sum(9 * i * o + 2 * o for i, o in zip(widths, widths[1:], strict=False))
    stem_macs = sum(9 * i * o * r * r for i, o, r in zip(widths, widths[1:], res, strict=False))
    st = compute_stats(g)
    head = 5 * 144 * 1000 + 1000
    assert st.model_params - st.total.params - head == stem_params
    assert st.macs - st.total.macs - 5 * 144 * 1000 == stem_macs


def test_cifar_stem_graph_is_unchanged_by_the_new_key() -> None:
    # The default stem keeps the one-group layout of format version 1 (op 0, one STEM_CONV_BN).
    g = build_graph(spec())
    (stem,) = np.flatnonzero(g.kind == Kind.STEM)
    assert int(g.op[stem]) == 0 and g.group_name(int(stem)) == "stem"
    assert "stem.conv.weight" in weight_table(g) and not any(n.startswith("stem.conv1") for n in weight_table(g))


def test_verifier_rejects_a_broken_stem_chain() -> None:
    g = build_graph(spec(stem="imagenet"))
    op = g.op.copy()
    op[np.flatnonzero(g.kind == Kind.STEM)[0]] = 2  # layers 2, 2, 3
    with pytest.raises(Exception, match="stem groups"):
        g.replace(op=op).verify()


# ---- lowering ----------------------------------------------------------------------------------------


def reference_stem(w: dict[str, np.ndarray], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The stem from its definition, with F.conv2d and eval-mode BN on the graph's weights."""

    def conv_bn(h: torch.Tensor, i: int) -> torch.Tensor:
        y = F.conv2d(h, torch.from_numpy(np.array(w[f"stem.conv{i}.weight"])), stride=2, padding=1)
        bn = {
            k: torch.from_numpy(np.array(w[f"stem.bn{i}.{k}"]))
            for k in ("weight", "bias", "running_mean", "running_var")
        }
        return F.batch_norm(y, bn["running_mean"], bn["running_var"], bn["weight"], bn["bias"], eps=1e-5)

    s1 = conv_bn(x, 1)
    s2 = conv_bn(F.relu(s1), 2)
    return s2, conv_bn(F.relu(s2), 3)


def test_lowered_stem_equals_its_definition() -> None:
    g = with_weights(build_graph(spec(size=32, stem="imagenet")), seed=1)
    m = lower(g, "compact").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = m.stem(x)
        ra, rb = reference_stem(g.weights, x)
    assert a.shape == (2, 12, 8, 8) and b.shape == (2, 12, 4, 4)
    torch.testing.assert_close(a, ra, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b, rb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_imagenet_stem_compact_equals_masked_and_counts(seed: int) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    g = with_weights(random_prune(build_graph(spec(size=32, stem="imagenet", cells_per_stack=2)), seed), seed)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    masked, compact = (lower(g, mode).double().eval() for mode in ("masked", "compact"))
    with torch.no_grad():
        torch.testing.assert_close(compact(x), masked(x), rtol=0, atol=1e-10)
    # training path (autograd on): same logits and gradients on live weights
    for m in (masked, compact):
        m.train()
        F.cross_entropy(m(x), torch.arange(3)).backward()
    for name in ("stem.conv1.weight", "stem.conv3.weight", "stem.bn2.weight"):
        torch.testing.assert_close(
            compact.get_parameter(name).grad, masked.get_parameter(name).grad, rtol=1e-9, atol=1e-12
        )
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        lower(g, "compact").eval()(x.float())
    assert counter.get_total_flops() == 2 * 3 * compute_stats(g).macs_live
    assert lower(g, "compact").num_parameters() == compute_stats(g).model_params_live


@pytest.mark.parametrize("seed", [0, 3])
def test_imagenet_stem_onnx_matches_pytorch(seed: int, tmp_path: Path) -> None:
    g = with_weights(random_prune(build_graph(spec(size=24, stem="imagenet")), seed), seed)
    report = export(g, tmp_path / "m.onnx", check=True)
    assert report.check is not None and report.check.passed, report.check


# ---- transfer ------------------------------------------------------------------------------------


def cell_columns(g: Graph) -> list[tuple[int, ...]]:
    return [(c.index, c.x, c.x_live, c.d_to_x, c.z_to_x, c.params_live) for c in compute_stats(g).cells]


def test_paper_model_transferred_to_imagenet(tmp_path: Path) -> None:
    """Acceptance 1: the paper config at rho 0.46 in examples/nasnet-imagenet.yaml."""
    source = build_graph(parse_spec({"name": "p"}))
    source = prune_to_rho(source, 0.46, score=lambda h: random_saliency(h, 0), criterion="random")
    target = load_spec(EXAMPLES / "nasnet-imagenet.yaml")
    g = transfer(source, target)
    assert cell_columns(g) == cell_columns(source)  # every cell's x*, d->x, z->x (and live params)
    for s_op, t_op in zip(source.ops, g.ops, strict=True):
        np.testing.assert_array_equal(g.alive[g.group_slice(t_op.x)], source.alive[source.group_slice(s_op.x)])
    assert g.history[-1] == {"pass": "transfer", "from": "p", "to": "nasnet-imagenet", "weights": "init"}
    assert not g.weights
    # forward at 224x224, and the export (BN calibrated on random input) matches PyTorch
    g = with_weights(g, batch=2)
    m = lower(g, "compact").eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    report = export(g, tmp_path / "imagenet.onnx", check=True)
    assert report.check is not None and report.check.passed, report.check


def test_transfer_refuses_a_different_cell_structure() -> None:
    source = build_graph(spec())
    with pytest.raises(InputError, match=r"nasnet\.nodes_per_cell is 2, the searched network's is 3"):
        transfer(source, spec(nodes_per_cell=2))
    with pytest.raises(InputError, match=r"nasnet\.stem_multiplier"):
        transfer(source, spec(stem_multiplier=2))
    dense = parse_spec({"name": "d", "space": "densenet", "densenet": {"growth_rate": 4, "depth": 10}})
    with pytest.raises(InputError, match="space is 'densenet'"):
        transfer(source, dense)


def test_densenet_transfer_keeps_the_blocks() -> None:
    def dense(size: int, classes: int) -> Spec:
        d = {"growth_rate": 4, "depth": 16}
        return parse_spec(
            {"name": "d", "space": "densenet", "input": {"size": size}, "classes": classes, "densenet": d}
        )

    source = random_prune(build_graph(dense(8, 10)), 2)
    g = transfer(source, dense(16, 3))
    assert cell_columns(g) == cell_columns(source)
    assert int(g.size[g.head_group]) == 3 and int(g.res[g.input_group]) == 16


def test_keep_weights_by_operation() -> None:
    source = with_weights(random_prune(build_graph(spec(size=16)), 4), seed=4)
    g = transfer(source, spec(size=32, classes=5, stem="imagenet"))
    init = initial_weights(g, seed=9).weights
    kept = keep_weights(source, g, init)
    event = kept.history[-1]
    # New: the three stem layers, the classifier (5 classes), cell 1's d_a (a factorized reduce now).
    assert event["initialised"] == ["stem.conv1", "stem.conv2", "stem.conv3", "cell1.d_a", "head"]
    assert event["weights"] == "keep" and event["kept"] == len({i.bundle for i in weight_table(g).values()}) - 5
    for name, info in weight_table(g).items():
        fresh = name.startswith(("stem.", "head.", "cell1.d_a."))
        want = init[name] if fresh else source.weights[name]
        np.testing.assert_array_equal(kept.weights[name], want, err_msg=name)
        assert kept.weights[name].shape == info.shape
    # The BN statistics of the new factorized reduce are fresh (mean 0, var 1), not the old conv's.
    assert not np.array_equal(source.weights["cell1.d_a.bn.running_var"], kept.weights["cell1.d_a.bn.running_var"])
    # and the result lowers and runs
    to_graph(kept, lower(kept, "compact"))
    with pytest.raises(InputError, match="no trained weights"):
        keep_weights(build_graph(spec()), g, init)


# ---- the command line ------------------------------------------------------------------------------


def image_folder(root: Path, classes: int, per_class: int, size: int, seed: int = 0) -> Path:
    """A folder data set of RGB PNGs, one subfolder per class; each class its own mean colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            base = np.array([(c * 97) % 256, (c * 41 + 80) % 256, (255 - c * 67) % 256])
            pixels = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(d / f"{i}.png")
    return root


def test_cli_transfer_of_the_searched_tiny_network_to_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Acceptance 2: the demo's chain (build, train, prune) on digits, then its cells moved to
    16x16 RGB images of 3 classes, trained, evaluated and exported."""
    import json

    import yaml

    from cnas_ir.app.cli import main
    from cnas_ir.format import load

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--run-dir", str(tmp_path / "run"), *args])
        out, err = capsys.readouterr()
        return code, out, err

    assert run("build", str(EXAMPLES / "tiny.yaml"))[0] == 0
    assert run("train", "--epochs", "2")[0] == 0
    code, _, err = run("prune", "--finetune-epochs", "0", "--saliency-batches", "2")
    assert code == 0, err
    searched = load(tmp_path / "run" / "003-prune.cnas")
    image_folder(tmp_path / "images", classes=3, per_class=12, size=16)
    target = yaml.safe_load((EXAMPLES / "tiny.yaml").read_text())
    target |= {"name": "tiny-folder", "input": {"channels": 3, "size": 16}, "classes": 3}
    target["data"] = {"name": "folder", "path": str(tmp_path / "images")}
    (tmp_path / "target.yaml").write_text(yaml.safe_dump(target))
    code, out, err = run("transfer", str(tmp_path / "run" / "003-prune.cnas"), str(tmp_path / "target.yaml"), "--json")
    assert code == 0, err
    assert "transferred tiny-digits's 5 cells into tiny-folder" in err
    moved = load(tmp_path / "run" / "004-transfer.cnas")
    assert cell_columns(moved) == cell_columns(searched)
    assert json.loads(out)["total"]["x_live"] == compute_stats(searched).total.x_live
    code, _, err = run("train", "--epochs", "2")
    assert code == 0, err
    code, out, err = run("eval", "--json")
    assert code == 0, err
    assert json.loads(out)["n"] > 0
    code, out, err = run("export", "--onnx", "--check")
    assert code == 0, err
    trained = load(tmp_path / "run" / "005-train.cnas")
    assert int(trained.size[trained.head_group]) == 3 and cell_columns(trained) == cell_columns(searched)
    assert run("report")[0] == 0
    assert "transfer the cells of tiny-digits into tiny-folder" in (tmp_path / "run" / "report.html").read_text()


def test_cli_transfer_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from cnas_ir.app.cli import main

    src = tmp_path / "s.cnas"
    assert main(["build", str(EXAMPLES / "tiny.yaml"), "-o", str(src)]) == 0
    target = yaml.safe_load((EXAMPLES / "tiny.yaml").read_text())
    target["nasnet"]["channels"] = 6
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(target))
    capsys.readouterr()
    assert main(["transfer", str(src), str(tmp_path / "t.yaml"), "-o", str(tmp_path / "o.cnas")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nasnet.channels is 6, the searched network's is 8" in err
    assert not (tmp_path / "o.cnas").exists()
    # keep needs weights: an untrained source is refused in one line
    target["nasnet"]["channels"] = 8
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(target))
    assert (
        main(["transfer", str(src), str(tmp_path / "t.yaml"), "--weights", "keep", "-o", str(tmp_path / "o.cnas")]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s.cnas: no trained weights to keep" in err
