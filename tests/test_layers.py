"""The layers of the tree (ARCHITECTURE.md), enforced on the module-level import graph.

    core      cnas_ir/*.py          spec, IR, weights table, format, dump, run directory, errors,
                                    estimate, networkx views: no torch, onnx, onnxruntime, matplotlib
    passes    passes/               graph passes and the execution plan: numpy
    backends  backends/             PyTorch and ONNX
    app       cnas_ir/app/          click commands, report, drawings, experiment runner
                                    (and cnas_ir/__main__.py, which runs the command line)

At module level a layer imports only itself and the layers below it (the app: core and
passes); the app may import the backends inside functions (start-up time), and
``cnas_ir/__init__.py`` may import a pass inside ``cnas_ir.build`` (the public API). Imports
under ``if TYPE_CHECKING:`` are not executed and do not count. The module-level import graph
has no cycle.

The check reads source files only (:mod:`ast`), so it runs on any copy of the tree: the last
tests plant a forbidden import and a cycle in a temporary copy and show that it fails.
"""

from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import ROOT

LAYERS = ("core", "passes", "backends", "app")
# What each layer may import at module level.
ALLOWED = {
    "core": {"core"},
    "passes": {"core", "passes"},
    "backends": {"core", "passes", "backends"},
    "app": {"core", "passes", "app"},
}
# ... and inside functions, in addition.
LAZY = {"app": {"backends"}}
LAZY_FILES = {"cnas_ir/__init__.py": {"passes"}}  # cnas_ir.build runs the build pass
# Third-party packages a layer never imports, at any level.
BANNED = {
    "core": {"torch", "onnx", "onnxruntime", "matplotlib"},
    "passes": {"torch", "onnx", "onnxruntime", "matplotlib"},
    "backends": {"matplotlib"},
    "app": set(),
}
# ... nor at module level (the app's start-up stays light).
BANNED_AT_TOP = {"app": {"torch", "onnx", "onnxruntime"}}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # what it imports, dotted (a project module, or a third-party top-level name)
    line: int
    top: bool  # at module level (not inside a function), outside `if TYPE_CHECKING:`


def module_name(rel: Path) -> str:
    """cnas_ir/x.py -> cnas_ir.x; passes/x.py -> cnas_ir.passes.x; backends/a/b.py ->
    cnas_ir.backends.a.b (the package-dir mapping of pyproject.toml)."""
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] in ("passes", "backends"):
        parts.insert(0, "cnas_ir")
    return ".".join(parts)


def layer_of(module: str) -> str:
    if module == "cnas_ir.__main__":  # `python -m cnas_ir`: the command line, so the application
        return "app"
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("app", "passes", "backends"):
        return parts[1]
    return "core"


def source_files(root: Path) -> dict[str, Path]:
    """Every project module of the tree at ``root``: dotted name -> file."""
    files = {}
    for top in ("cnas_ir", "passes", "backends"):
        for path in sorted((root / top).rglob("*.py")):
            files[module_name(path.relative_to(root))] = path
    return files


def imports_of(module: str, path: Path, modules: set[str]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def resolve(name: str) -> str:
        """A project module (the longest existing prefix) or a third-party top-level name."""
        if not name.startswith("cnas_ir"):
            return name.split(".")[0]
        while name not in modules and "." in name:
            name = name.rpartition(".")[0]
        return name

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend(Import(module, resolve(a.name), child.lineno, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for a in child.names:
                    target = f"{base}.{a.name}"
                    found.append(Import(module, resolve(target if target in modules else base), child.lineno, top))
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(tree, True)
    return found


def check_tree(root: Path) -> list[str]:
    """Every violation of the layering in the tree at ``root``, one line each."""
    files = source_files(root)
    modules = set(files)
    problems: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in files.items():
        rel = path.relative_to(root).as_posix()
        layer = layer_of(module)
        for imp in imports_of(module, path, modules):
            where = f"{rel}:{imp.line}"
            if not imp.target.startswith("cnas_ir"):
                if imp.target in BANNED[layer] or (imp.top and imp.target in BANNED_AT_TOP.get(layer, set())):
                    problems.append(f"{where}: the {layer} layer imports {imp.target}")
                continue
            if imp.target == module:
                continue
            target_layer = layer_of(imp.target)
            allowed = set(ALLOWED[layer])
            if not imp.top:
                allowed |= LAZY.get(layer, set()) | LAZY_FILES.get(rel, set())
            if target_layer not in allowed:
                at = "at module level " if imp.top else ""
                problems.append(f"{where}: the {layer} layer imports {imp.target} ({target_layer}) {at}".rstrip())
            if imp.top:
                graph[module].add(imp.target)
    problems.extend(f"import cycle: {' -> '.join(c)}" for c in cycles(graph))
    return list(dict.fromkeys(problems))  # `from m import a, b` once


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component) + [sorted(component)[0]])
    return found


def test_the_tree_is_layered() -> None:
    problems = check_tree(ROOT)
    assert not problems, "\n".join(problems)


def test_every_layer_has_modules() -> None:
    layers = {layer_of(m) for m in source_files(ROOT)}
    assert layers == set(LAYERS)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    for top in ("cnas_ir", "passes", "backends"):
        shutil.copytree(ROOT / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def plant(path: Path, line: str) -> None:
    """``line`` after the module's ``from __future__`` import (or first)."""
    text = path.read_text(encoding="utf-8")
    marker = "from __future__ import annotations\n"
    if marker in text:
        path.write_text(text.replace(marker, marker + line + "\n", 1), encoding="utf-8")
    else:
        path.write_text(line + "\n" + text, encoding="utf-8")


def test_check_fails_on_torch_in_the_core(copy: Path) -> None:
    assert check_tree(copy) == []
    plant(copy / "cnas_ir" / "spec.py", "import torch")
    assert check_tree(copy) == [f"cnas_ir/spec.py:{_planted_line(copy / 'cnas_ir' / 'spec.py')}: "
                                "the core layer imports torch"]  # fmt: skip


def test_check_fails_on_a_cycle(copy: Path) -> None:
    # errors.py is imported by spec.py at module level; making errors import spec closes a loop.
    plant(copy / "cnas_ir" / "errors.py", "from cnas_ir.spec import Spec")
    problems = check_tree(copy)
    assert any(p.startswith("import cycle: ") and "cnas_ir.errors" in p and "cnas_ir.spec" in p for p in problems)


def test_check_fails_on_a_backend_imported_by_a_pass(copy: Path) -> None:
    plant(copy / "passes" / "fold.py", "from cnas_ir.backends.pytorch import train")
    problems = check_tree(copy)
    assert any("passes/fold.py" in p and "the passes layer imports cnas_ir.backends" in p for p in problems), problems


def test_check_fails_on_a_backend_at_the_apps_module_level(copy: Path) -> None:
    app = next(p for p in sorted((copy / "cnas_ir" / "app").glob("*.py")) if p.name != "__init__.py")
    plant(app, "from cnas_ir.backends.pytorch import train")
    problems = check_tree(copy)
    assert any("the app layer imports cnas_ir.backends" in p and "at module level" in p for p in problems), problems


def _planted_line(path: Path) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if ln == "import torch")
