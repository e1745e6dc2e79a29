"""ARCHITECTURE.md stays true: every ``path:symbol`` it cites names a file of the tree and a
class, function, method or module-level name defined in it (found by parsing the file)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from helpers import ROOT

# `cnas_ir/ir.py:Graph`, `passes/prune.py:PruneStep`, `backends/pytorch/lower.py:CnasModule.forward`
CITATION = re.compile(r"`([\w./-]+\.py):([A-Za-z_][\w.]*)`")


def defined(tree: ast.Module, dotted: str) -> bool:
    """Whether ``dotted`` (``name`` or ``Class.member``) is defined at the top of ``tree``."""
    scope: list[ast.stmt] = list(tree.body)
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        found = None
        for node in scope:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == part:
                found = node
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == part for t in node.targets):
                found = node
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == part:
                found = node
        if found is None:
            return False
        if i < len(parts) - 1:
            if not isinstance(found, ast.ClassDef):
                return False
            scope = list(found.body)
    return True


def citations(text: str) -> list[tuple[str, str]]:
    return CITATION.findall(text)


def unresolved(root: Path, text: str) -> list[str]:
    bad = []
    trees: dict[str, ast.Module] = {}
    for path, symbol in citations(text):
        file = root / path
        if not file.is_file():
            bad.append(f"{path}:{symbol} (no such file)")
            continue
        tree = trees.setdefault(path, ast.parse(file.read_text(encoding="utf-8")))
        if not defined(tree, symbol):
            bad.append(f"{path}:{symbol} (not defined there)")
    return bad


def test_architecture_cites_what_exists() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    assert len(citations(text)) >= 40
    assert unresolved(ROOT, text) == []


def test_architecture_is_one_page() -> None:
    lines = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200


@pytest.mark.parametrize(
    "citation,problem",
    [
        ("`passes/prune.py:no_such_function`", "not defined there"),
        ("`passes/no_such_file.py:fold`", "no such file"),
        ("`backends/pytorch/lower.py:CnasModule.no_such_method`", "not defined there"),
    ],
)
def test_a_wrong_citation_is_caught(citation: str, problem: str) -> None:
    assert [p for p in unresolved(ROOT, f"see {citation}") if problem in p]


def test_methods_and_names_resolve() -> None:
    ok = "`backends/pytorch/lower.py:CnasModule.forward` `cnas_ir/ir.py:Kind` `cnas_ir/estimate.py:MAX_STACKS`"
    assert unresolved(ROOT, ok) == []
