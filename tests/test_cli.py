"""The command line: the build -> stats -> dump chain, JSON keys, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import EXAMPLES
from helpers import run_cli as run

# SPEC §7's keys, and §9's multiply-adds (issue 18)
CELL_KEYS = {"index", "kind", "width", "x", "y", "params", "x_live", "params_live", "d_to_x", "z_to_x", "macs",
             "macs_live"}  # fmt: skip


def test_build_stats_dump_chain_in_fresh_folder(tmp_path, capsys):
    code, out, err = run(["build", str(EXAMPLES / "tiny.yaml")], tmp_path, capsys)
    assert code == 0 and out == "" and "cnas-run/001-build.cnas" in err
    code, out, _ = run(["stats", "--json"], tmp_path, capsys)
    doc = json.loads(out)
    assert code == 0
    assert all(set(c) == CELL_KEYS for c in doc["cells"])
    assert set(doc["total"]) == CELL_KEYS - {"index", "kind", "width"} | {"rho", "rho_macs"}
    assert doc["total"]["rho"] == 1.0 and doc["total"]["rho_macs"] == 1.0
    code, out, _ = run(["stats", "--markdown"], tmp_path, capsys)
    assert code == 0 and out.startswith("| cell | kind | C | |X| |")
    code, out, _ = run(["dump"], tmp_path, capsys)
    assert code == 0 and out.startswith("cnas-ir dump v1")
    # a second build gets the next number, and is what the commands read by default
    run(["build", str(EXAMPLES / "densenet.yaml")], tmp_path, capsys)
    _, out, _ = run(["stats", "--json"], tmp_path, capsys)
    assert json.loads(out)["total"]["x"] == 8832
    _, out, _ = run(["stats", "--json", "cnas-run/001-build.cnas"], tmp_path, capsys)
    assert json.loads(out)["total"]["x"] == 1152


def test_build_json_is_one_document(tmp_path, capsys):
    code, out, _ = run(["build", str(EXAMPLES / "nasnet.yaml"), "--json", "-o", "p.cnas"], tmp_path, capsys)
    assert code == 0 and json.loads(out)["total"]["params"] == 9_880_704
    assert (tmp_path / "p.cnas").exists() and not (tmp_path / "cnas-run").exists()


BAD_SPECS = {
    "not_yaml.yaml": ("name: [unclosed\n", "not valid YAML"),
    "unknown.yaml": ("name: x\nnasnet: {chanels: 4}\n", "nasnet.chanels: unknown key"),
    "wrong_type.yaml": ("name: x\nnasnet: {channels: four}\n", "nasnet.channels"),
    "negative.yaml": ("name: x\nnasnet: {channels: -4}\n", "nasnet.channels: Input should be greater than 0"),
    "zero_nodes.yaml": ("name: x\nnasnet: {nodes_per_cell: 0}\n", "nasnet.nodes_per_cell"),
    "list.yaml": ("- 1\n- 2\n", "must be a mapping"),
    "bool_as_int.yaml": ("name: x\nnasnet: {stacks: true}\n", "nasnet.stacks"),
    "depth.yaml": ("name: x\nspace: densenet\ndensenet: {depth: 50}\n", "densenet.depth"),
}


@pytest.mark.parametrize("fname", sorted(BAD_SPECS))
def test_bad_spec_is_one_line_exit_2(tmp_path, capsys, fname):
    text, fragment = BAD_SPECS[fname]
    (tmp_path / fname).write_text(text)
    code, out, err = run(["build", fname], tmp_path, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and fname in err and fragment in err, err
    assert not (tmp_path / "cnas-run").exists()  # nothing written


def test_missing_spec_and_usage_errors(tmp_path, capsys):
    code, _, err = run(["build", "nope.yaml"], tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1 and "nope.yaml: no such spec file" in err
    code, _, err = run(["stats"], tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1 and "no artifact" in err
    code, _, err = run(["stats", "--bogus"], tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1 and "--bogus" in err
    code, _, err = run(["frobnicate"], tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1
    code, _, err = run(["build", str(EXAMPLES / "tiny.yaml"), "-o", "x.txt"], tmp_path, capsys)
    assert code == 2 and "must end in .cnas" in err


@pytest.mark.parametrize(
    "content,fragment",
    [(b"PK\x03\x04garbage", "truncated"), (b'{"a": 1}', "not a cnas-ir artifact"), (b"", "not a cnas-ir artifact")],
)
def test_bad_artifact_exit_2(tmp_path, capsys, content, fragment):
    (tmp_path / "bad.cnas").write_bytes(content)
    for cmd in ("stats", "dump"):
        code, out, err = run([cmd, "bad.cnas"], tmp_path, capsys)
        assert code == 2 and out == "" and err.count("\n") == 1 and fragment in err, err


def test_unwritable_output_is_runtime_error(tmp_path, capsys):
    # A regular file where a folder should be: writing fails whoever runs the test (root too).
    (tmp_path / "afile").write_text("x")
    code, out, err = run(["build", str(EXAMPLES / "tiny.yaml"), "-o", "afile/t.cnas"], tmp_path, capsys)
    assert code == 1 and out == "" and err.count("\n") == 1 and "cannot write" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_console_script_no_traceback(tmp_path):
    # The installed entry point, as a user runs it: one line, exit 2, no traceback.
    r = subprocess.run([sys.executable, "-m", "cnas_ir", "build", "missing.yaml"], cwd=tmp_path,
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    r = subprocess.run([sys.executable, "-m", "cnas_ir", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "build" in r.stdout and "stats" in r.stdout
