"""Robust at the edges (issue 19): hostile YAML, oversized specs and the one-line error format.

Each case is what a new user can type; each must end in one short line on stderr, exit code 2,
without building the huge thing first (a test that expanded the alias bomb or allocated the
oversized graph would not finish).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnas_ir.errors import MAX_LINE, one_line
from helpers import EXAMPLES
from helpers import run_cli as run

# Nine levels of aliases, each a list of ten of the previous: 10^9 strings once expanded.
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(8)
) + "name: *i\n"  # fmt: skip


def one_error_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("cnas-ir: error: "), err[:500]
    assert len(err) - 1 <= MAX_LINE, len(err)
    return err


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (BOMB, "anchors and aliases are not accepted at line 1"),
        ("name: &n x\nnasnet: {channels: 4}\n", "anchors and aliases are not accepted"),
        ("name: x\nnasnet: {channels: [[[4]]]}\n", "nested 3 levels deep at line 2; the schema has at most 2"),
        ("name: x\nnasnet: {channels: " + "9" * 5000 + "}\n", "a value of 5,000 characters at line 2"),
        ("name: x\nnasnet: {chanels: 4, stack: 2, nodes: 3}\ntrain: {epoch: 1}\n", "(and 3 more)"),
        ("name: x\nnasnet: {channels: '" + "y" * 4000 + "'}\n", "nasnet.channels: Input should be a valid integer"),
    ],
    ids=["alias-bomb", "anchor", "deep", "huge-int", "many-errors", "long-value"],
)
def test_hostile_specs_get_one_short_line(tmp_path: Path, capsys, text: str, fragment: str) -> None:
    (tmp_path / "s.yaml").write_text(text)
    code, out, err = run(["build", "s.yaml"], tmp_path, capsys)
    assert code == 2 and out == ""
    assert fragment in one_error_line(err)
    assert not (tmp_path / "cnas-run").exists()


def test_a_spec_over_one_mebibyte_is_not_read(tmp_path: Path, capsys) -> None:
    (tmp_path / "s.yaml").write_text("name: x\n" + "# padding\n" * 120_000)
    code, _, err = run(["build", "s.yaml"], tmp_path, capsys)
    assert code == 2 and "1,200,008 bytes; a cnas-ir spec file is at most 1024 KiB" in one_error_line(err)


@pytest.mark.parametrize(
    ("nas", "key"),
    [("channels: 1000000", "nasnet.channels"), ("cells_per_stack: 100000", "nasnet.cells_per_stack"),
     ("stacks: 100000", "nasnet.stacks")],
)  # fmt: skip
def test_oversized_specs_are_refused_before_allocation(tmp_path: Path, capsys, nas: str, key: str) -> None:
    (tmp_path / "s.yaml").write_text(f"name: x\nnasnet: {{{nas}}}\n")
    code, _, err = run(["build", "s.yaml"], tmp_path, capsys)
    line = one_error_line(err)
    assert code == 2 and f"s.yaml: {key} = " in line and "> the 4 GiB limit" in line
    # the estimate alone, without building
    code, out, _ = run(["build", "s.yaml", "--dry-run", "--json"], tmp_path, capsys)
    doc = json.loads(out)
    assert code == 0 and doc["build_bytes"] > 4 * 2**30 and doc["vertices"] > 0


def test_max_memory_moves_the_limit(tmp_path: Path, capsys) -> None:
    spec = Path(__file__).resolve().parent.parent / "examples" / "nasnet.yaml"
    code, _, err = run(["build", spec, "--max-memory", "10M"], tmp_path, capsys)
    assert code == 2 and "nasnet.channels = 36" in one_error_line(err) and "> the 10 MiB limit" in err
    code, _, err = run(["build", spec, "--max-memory", "100M", "-o", "p.cnas"], tmp_path, capsys)
    assert code == 0, err
    code, _, err = run(["build", spec, "--max-memory", "lots"], tmp_path, capsys)
    assert code == 2 and "--max-memory" in one_error_line(err)


def test_python_build_has_the_same_check() -> None:
    import cnas_ir
    from cnas_ir.errors import InputError

    with pytest.raises(InputError, match=r"nasnet\.cells_per_stack = 100000"):
        cnas_ir.build({"name": "x", "nasnet": {"cells_per_stack": 100_000}})
    g = cnas_ir.build({"name": "x", "nasnet": {"channels": 4, "stacks": 1}}, max_memory=2**20)
    assert g.num_vertices > 0


def test_experiment_yaml_goes_through_the_same_reader(tmp_path: Path, capsys) -> None:
    (tmp_path / "e.yaml").write_text(BOMB)
    code, _, err = run(["experiment", "e.yaml"], tmp_path, capsys)
    assert code == 2 and "anchors and aliases are not accepted" in one_error_line(err)


def test_one_line_shortens_values_paths_and_the_whole() -> None:
    path = "/a" * 200 + "/artifact.cnas"
    line = one_line(f"{path}: bad\nthing {'v' * 500}")
    assert "\n" not in line and len(line) <= MAX_LINE
    assert line.startswith(".../") and "artifact.cnas: bad thing" in line
    assert one_line("x " * 400).endswith("...") and len(one_line("x " * 400)) == MAX_LINE


def test_public_load_holds_the_graph_against_its_spec(tmp_path: Path) -> None:
    # Two x vertices that copy each other's source channel: the verifier's local checks pass,
    # the spec's one-shot structure does not (the file's checksums are fine: it is saved as it is).
    import cnas_ir
    from cnas_ir.errors import InputError
    from cnas_ir.format import load as format_load

    g = cnas_ir.build(EXAMPLES / "tiny.yaml")
    src = g.src.copy()
    x = g.x_ids
    src[x[0]], src[x[1]] = src[x[1]], src[x[0]]
    cnas_ir.save(g.replace(src=src), tmp_path / "bad.cnas")
    format_load(tmp_path / "bad.cnas")  # the format's own checks pass
    with pytest.raises(InputError, match=r"bad.cnas: corrupt .cnas artifact \(invalid graph: column src differs"):
        cnas_ir.load(tmp_path / "bad.cnas")


def test_non_finite_weights_are_corrupt(tmp_path: Path) -> None:
    import numpy as np

    import cnas_ir
    from cnas_ir.errors import InputError
    from cnas_ir.weights import weight_table

    g = cnas_ir.build(EXAMPLES / "tiny.yaml")
    w = {n: np.zeros(i.shape, np.float32) for n, i in weight_table(g).items()}
    name = sorted(w)[3]
    w[name].flat[0] = np.nan
    cnas_ir.save(g.replace(weights=w), tmp_path / "nan.cnas")
    with pytest.raises(InputError, match=rf"weight {name} holds non-finite values"):
        cnas_ir.load(tmp_path / "nan.cnas")


@pytest.mark.parametrize(
    "doc,key",
    [
        ({"train": {"lr": float("inf")}}, "train.lr"),
        ({"search": {"gamma": float("nan")}}, "search.gamma"),
        ({"input": {"size": 2**16 + 1}}, "input.size"),
    ],
)
def test_infinite_values_and_huge_images_are_refused(doc: dict, key: str) -> None:
    from cnas_ir.errors import InputError
    from cnas_ir.spec import parse_spec

    with pytest.raises(InputError, match=key.replace(".", r"\.")):
        parse_spec({"name": "x"} | doc)
