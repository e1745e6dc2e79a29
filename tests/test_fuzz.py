"""The fuzzed front door (issue 19): hostile specs, damaged artifacts and random command lines.

Every case must end in exit 0 (the input happened to be fine), 2 (bad input) or 1 (the work
failed): never a traceback or an internal error, the error one line of at most 300 characters
on stderr, and nothing left behind by a failure. The spec strategy is derived from the pydantic
schema (``Spec.model_fields``, recursively) and the command-line strategy from the click
commands' parameters, so a new key or option is fuzzed without an edit here; the meta-tests
fail when one has a type the strategies do not know, or when a key is never drawn.

All tests are derandomized: the suite runs the same examples every time.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import re
import shutil
import tempfile
import types
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import annotated_types as at
import click
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

import cnas_ir
from cnas_ir.app.cli import cli, main
from cnas_ir.errors import MAX_LINE, InputError
from cnas_ir.estimate import check_size, parse_size
from cnas_ir.safeyaml import MAX_SCALAR
from cnas_ir.spec import SPEC_DEPTH, Spec
from helpers import EXAMPLES, TINY_SYNTHETIC, inside

pytestmark = pytest.mark.usefixtures("one_thread")

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

T = TypeVar("T")


def uniform(values: Sequence[T]) -> st.SearchStrategy[T]:
    """One of ``values``, each equally likely. (``sampled_from`` favours the first ones, as
    hypothesis favours simple examples; a fuzzer wants them all.)"""
    values = list(values)
    return st.randoms(use_true_random=False).map(lambda r: r.choice(values))


percent = uniform(range(100))

# Fuzzed builds get a smaller memory limit than the default 4G: an accepted one stays fast.
BUILD_LIMIT = "64M"

# ---------------------------------------------------------------------------------------------
# The contract


def check_contract(code: int, err: str, *, progress: bool = False) -> None:
    """Exit 0, 1 or 2; a failure says why in one line of at most MAX_LINE characters, no
    traceback and no internal error. ``progress``: the command may print progress lines
    (prune's iterations) before its error, which is then the last line."""
    event(f"exit {code}")  # --hypothesis-show-statistics: how many examples got through
    assert "Traceback" not in err, err
    assert "internal error" not in err, err
    assert code in (0, 1, 2), (code, err)
    if code == 0:
        return
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("cnas-ir:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert progress or len(lines) == 1, err
    assert errors[0].startswith("cnas-ir: error: "), err
    assert len(errors[0]) <= MAX_LINE, errors[0]


def run_cli(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """The CLI in-process in ``cwd``: (exit code, stdout, stderr). Like helpers.run_cli, but
    into strings rather than capsys's UTF-8 streams, which refuse what a real terminal shows (a
    file name that is not UTF-8 reaches argv as surrogates, and stderr writes them escaped)."""
    out, err = io.StringIO(), io.StringIO()
    with inside(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``folder`` with its contents (folders: None)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def check_files(code: int, before: dict[str, bytes | None], folder: Path) -> None:
    """A failure changes nothing; a success leaves no temp file of an atomic write."""
    after = snapshot(folder)
    if code != 0:
        assert after == before, f"a failure changed {sorted(set(after) ^ set(before)) or 'a file'}"
    assert not [p for p in after if p.endswith(".tmp")], sorted(after)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], Path]]:
    """A fresh empty folder per example (hypothesis reuses function-scoped fixtures); the
    previous example's is removed (hypothesis reports a failing input itself)."""
    base = tmp_path_factory.mktemp("fuzz")
    made: list[Path] = []

    def fresh() -> Path:
        if made:
            shutil.rmtree(made.pop(), ignore_errors=True)
        made.append(Path(tempfile.mkdtemp(dir=base)))
        return made[-1]

    yield fresh


@pytest.fixture(autouse=True)
def _no_run_dir_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CNAS_RUN_DIR", raising=False)


# ---------------------------------------------------------------------------------------------
# Specs: a strategy derived from the schema


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a section field (``InputSpec``, ``NasnetSpec | None``); None for a leaf."""
    for a in (annotation, *get_args(annotation)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def schema_leaves(model: type[BaseModel] = Spec, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], FieldInfo]:
    """Every leaf key of ``model``, as a path (``("nasnet", "channels")``), with its field."""
    out: dict[tuple[str, ...], FieldInfo] = {}
    for name, f in model.model_fields.items():
        sub = section_model(f.annotation)
        out |= {prefix + (name,): f} if sub is None else schema_leaves(sub, prefix + (name,))
    return out


LEAVES = schema_leaves()
SECTIONS = {(n,): m for n, f in Spec.model_fields.items() if (m := section_model(f.annotation)) is not None}


def _example_values() -> dict[tuple[str, ...], list[Any]]:
    """The values each leaf key has in examples/*.yaml: valid values a small range misses
    (``densenet.depth: 100``)."""
    found: dict[tuple[str, ...], list[Any]] = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for key, value in doc.items():
            for sub, v in value.items() if isinstance(value, dict) else [(None, value)]:
                p = (key,) if sub is None else (key, sub)
                if p in LEAVES and v not in found.setdefault(p, []):
                    found[p].append(v)
    return found


EXAMPLE_VALUES = _example_values()


def _bounds(f: FieldInfo) -> tuple[float | None, bool, float | None, bool, int]:
    """(low, low open, high, high open, minimum length) of a field's constraints."""
    lo = hi = None
    lo_open = hi_open = False
    min_len = 0
    for m in f.metadata:
        if isinstance(m, at.Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, at.Ge):
            lo = m.ge
        elif isinstance(m, at.Lt):
            hi, hi_open = m.lt, True
        elif isinstance(m, at.Le):
            hi = m.le
        elif isinstance(m, at.MinLen):
            min_len = m.min_length
        else:
            raise TypeError(f"no strategy for the constraint {m!r}: teach tests/test_fuzz.py")
    return lo, lo_open, hi, hi_open, min_len  # type: ignore[return-value]


def _typed(tp: Any, f: FieldInfo) -> st.SearchStrategy[Any]:
    """Values of type ``tp`` within ``f``'s constraints, small ones: a valid spec stays tiny."""
    origin = get_origin(tp)
    if origin is Literal:
        return uniform(get_args(tp))
    if origin in (Union, types.UnionType):
        return st.one_of(*(_typed(a, f) for a in get_args(tp)))
    if tp is type(None):
        return st.none()
    if tp is bool:
        return st.booleans()
    lo, lo_open, hi, hi_open, min_len = _bounds(f)
    if tp is int:
        start = -2 if lo is None else int(lo) + lo_open
        stop = start + 3 if hi is None else min(start + 3, int(hi) - hi_open)
        return st.integers(start, stop)
    if tp is float:
        low = -10.0 if lo is None else float(lo)
        high = low + 10.0 if hi is None else float(hi)
        return st.floats(low, high, exclude_min=lo_open, exclude_max=hi_open, allow_nan=False)
    if tp is str:
        return st.text(min_size=min_len, max_size=12)
    raise TypeError(f"no strategy for the type {tp!r}: teach tests/test_fuzz.py")


def valid_values(path: tuple[str, ...]) -> st.SearchStrategy[Any]:
    """Values the schema accepts for the leaf ``path`` (cross-key rules aside): its default,
    the examples' values, or small ones of its type and bounds."""
    f = LEAVES[path]
    known = [v for v in (f.default, *EXAMPLE_VALUES.get(path, ())) if v is not PydanticUndefined]
    typed = _typed(f.annotation, f)
    return st.one_of(uniform(known), typed) if known else typed


# Values no key wants, or only at its edge: wrong types, huge and negative numbers, special
# floats, unicode, strings that look like numbers, long scalars; and nested collections.
# fmt: off
EDGE_VALUES = [
    [], {"a": 1}, "", 0, -1, -(2**63), 2**15, 2**31, 2**63, 10**12, 10**100, 10**4000, float("inf"),
    float("-inf"), float("nan"), 1e308, -0.0, 5e-324, True, False, None, "36", "true", "1e3", "~", "null",
    "\u202e\u0301", "名前 🧪", "x" * (MAX_SCALAR + 1), "../../etc/passwd",
]
# fmt: on
_SCALARS = st.one_of(st.integers(), st.floats(), st.text(max_size=20), st.booleans(), st.none())
HOSTILE = st.one_of(
    uniform(EDGE_VALUES),
    _SCALARS,
    st.recursive(
        _SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=5
    ),
)


_BIG_INTS = [2**15 - 1, 2**15, 2**31 - 1, 2**31, 2**63, -(2**63), 10**12, 10**100, 10**4000]
_ODD_FLOATS = [float("nan"), float("inf"), float("-inf"), 1e308, 5e-324, 1e-300, -0.0]


def edge_values(path: tuple[str, ...]) -> st.SearchStrategy[Any]:
    """Values at or past the edges of the leaf ``path``'s type and bounds: a bound and its
    neighbours, huge and negative numbers, special floats, a choice in capitals."""
    f = LEAVES[path]
    lo, _, hi, _, _ = _bounds(f)
    tps = get_args(f.annotation) or (f.annotation,)
    values: list[Any] = ["", "x" * (MAX_SCALAR + 1), "ünï\u200bcode"]
    for b in (lo, hi):
        if b is not None:
            values += [b - 1, b, b + 1, float(b), math.nextafter(b, -math.inf), math.nextafter(b, math.inf)]
    if int in tps:
        values += _BIG_INTS
    if float in tps:
        values += _ODD_FLOATS
    if get_origin(f.annotation) is Literal:
        values += [str(c).upper() for c in tps] + [f" {c}" for c in tps]
    return uniform(values)


def leaf_faults(path: tuple[str, ...]) -> st.SearchStrategy[Any]:
    """A fault at the leaf ``path``: an edge value of its type, or anything hostile."""
    edges = edge_values(path)
    return st.one_of(edges, edges, HOSTILE)


# Percent of keys a document gets wrong, each at random; ONE: exactly one fault, at a key
# chosen uniformly. Documents with no fault reach the build, those with one test each key's
# message, those with many the parser's.
ONE = -1
RATES = (0, ONE, ONE, 5, 25)


@st.composite
def _model_dict(draw: st.DrawFn, model: type[BaseModel], prefix: tuple[str, ...], rate: int) -> dict[str, Any]:
    """A mapping for ``model`` from its fields: each key, with probability ``rate`` percent, is
    dropped or given a hostile value (a section: replaced whole, or damaged within); otherwise
    a required key is given and an optional one maybe, with a valid value. Then maybe an
    unknown key."""
    doc: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        path = prefix + (name,)
        sub = section_model(f.annotation)
        if draw(percent) < rate:
            fault = draw(uniform(["drop", "hostile"]))
            if fault == "hostile":
                doc[name] = draw(HOSTILE if sub is not None else leaf_faults(path))
            continue
        if f.is_required() or draw(st.booleans()):
            if sub is None:
                doc[name] = draw(valid_values(path))
            elif type(None) in get_args(f.annotation) and draw(st.booleans()):
                doc[name] = None  # an optional section, given as null
            else:
                doc[name] = draw(_model_dict(sub, path, rate))
    if draw(percent) < rate:
        doc[draw(st.text(min_size=1, max_size=10))] = draw(HOSTILE)
    return doc


@st.composite
def spec_docs(draw: st.DrawFn, fixed: dict[tuple[str, ...], Any] | None = None, rates: tuple[int, ...] = RATES) -> Any:
    """A spec document from the schema (:func:`_model_dict` at a rate drawn from ``rates``),
    with the ``fixed`` (section, key) values set; now and then not a mapping at all."""
    if draw(percent) < 3:
        return draw(HOSTILE.filter(lambda v: not isinstance(v, dict)))
    rate = draw(uniform(rates))
    doc = draw(_model_dict(Spec, (), max(rate, 0)))
    for (section, key), value in (fixed or {}).items():
        if not isinstance(doc.get(section), dict):
            doc[section] = {}
        doc[section][key] = value
    if rate == ONE:
        path = draw(uniform(sorted(LEAVES) + sorted(SECTIONS)))
        parent = doc if len(path) == 1 else doc.setdefault(path[0], {})
        if not isinstance(parent, dict):
            parent = doc[path[0]] = {}
        fault = draw(uniform(["hostile", "hostile", "hostile", "drop", "unknown key"]))
        if fault == "drop":
            parent.pop(path[-1], None)
        elif fault == "unknown key":
            parent[draw(st.text(min_size=1, max_size=10))] = draw(HOSTILE)
        else:
            parent[path[-1]] = draw(leaf_faults(path) if path in LEAVES else HOSTILE)
    return doc


class _Dumper(yaml.SafeDumper):
    """Writes a value met twice twice (cnas-ir refuses YAML anchors and aliases), and quotes a
    string such as "1e3" that cnas-ir, as JSON, reads as a number."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_Dumper.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


UNREADABLE = object()  # a document its own format cannot read back


def write_doc(folder: Path, doc: Any, as_json: bool, name: str = "spec.yaml") -> tuple[Path, Any]:
    """``doc`` written as JSON (when it has no nan or infinity, which JSON lacks) or YAML to
    ``name`` in ``folder``; the file and what it means, read back by its format's own reader
    (JSON's json.loads: a character beyond U+FFFF is one character, not two escapes)."""
    path = folder / name
    try:
        text = json.dumps(doc, allow_nan=False) if as_json else None
    except ValueError:
        text = None
    if text is not None:
        path.write_text(text, encoding="utf-8")
        return path, json.loads(text)
    text = yaml.dump(doc, Dumper=_Dumper, allow_unicode=True, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    try:
        return path, yaml.safe_load(text)
    except yaml.YAMLError:
        return path, UNREADABLE


def _depth(v: Any) -> int:
    if isinstance(v, dict):
        return 1 + max(map(_depth, v.values()), default=0)
    if isinstance(v, list):
        return 1 + max(map(_depth, v), default=0)
    return 0


def _longest(v: Any) -> int:
    if isinstance(v, dict):
        return max((max(len(str(k)), _longest(x)) for k, x in v.items()), default=0)
    if isinstance(v, list):
        return max(map(_longest, v), default=0)
    return len(v) if isinstance(v, str) else len(str(v)) if isinstance(v, int) else 0


def accepted(data: Any) -> Spec | None:
    """The spec a file meaning ``data`` holds if cnas-ir must accept it (the schema takes it and
    the YAML reader's limits allow it), else None; independent of the CLI's code path."""
    if not isinstance(data, dict) or _depth(data) > SPEC_DEPTH or _longest(data) > MAX_SCALAR:
        return None
    try:
        return Spec.model_validate(data)
    except ValidationError:
        return None


def test_strategy_knows_every_schema_key() -> None:
    """The keys the strategy walks are the schema's, as pydantic's JSON schema independently
    lists them, and every key's type and constraints have a strategy."""
    schema = Spec.model_json_schema()
    defs = schema.get("$defs", {})

    def props(node: dict[str, Any], prefix: tuple[str, ...]) -> set[tuple[str, ...]]:
        out: set[tuple[str, ...]] = set()
        for name, sub in node["properties"].items():
            refs = [s["$ref"] for s in [sub, *sub.get("anyOf", [])] if "$ref" in s]
            out |= props(defs[refs[0].split("/")[-1]], prefix + (name,)) if refs else {prefix + (name,)}
        return out

    assert set(LEAVES) == props(schema, ())
    assert set(SECTIONS) == {p[:1] for p in LEAVES if len(p) == 2}
    for path in LEAVES:
        valid_values(path), leaf_faults(path)  # a TypeError names a type the strategies lack


def leaf_is_valid(path: tuple[str, ...], value: Any) -> bool:
    """Whether the schema takes ``value`` for the leaf ``path`` in an otherwise minimal spec."""
    doc: dict[str, Any] = {"name": "x"}
    if path[0] == "densenet":
        doc["space"] = "densenet"
    if len(path) == 1:
        doc[path[0]] = value
    else:
        doc[path[0]] = {path[1]: value}
    try:
        Spec.model_validate(doc)
    except ValidationError as e:
        return not any(tuple(map(str, err["loc"]))[: len(path)] == path for err in e.errors())
    return True


@pytest.mark.parametrize("path", sorted(LEAVES), ids=".".join)
def test_each_key_gets_valid_and_invalid_values(path: tuple[str, ...]) -> None:
    """The key's valid values are valid and its faults include invalid ones (one case per key
    of the schema: a new key gets its own)."""
    invalid = 0

    @settings(FUZZ, max_examples=25)
    @given(valid=valid_values(path), fault=leaf_faults(path))
    def draw(valid: Any, fault: Any) -> None:
        nonlocal invalid
        # densenet's depth is 6n+4: only its default and the examples' values are valid
        assert leaf_is_valid(path, valid) or path == ("densenet", "depth"), valid
        invalid += not leaf_is_valid(path, fault)

    draw()
    assert invalid > 0


def test_every_key_is_drawn() -> None:
    """Across the drawn documents every key of the schema appears, and whole specs are valid
    often enough to reach the build."""
    seen: set[tuple[str, ...]] = set()
    specs_valid = 0

    @settings(FUZZ, max_examples=300)
    @given(spec_docs())
    def draw(doc: Any) -> None:
        nonlocal specs_valid
        if not isinstance(doc, dict):
            return
        for path in LEAVES:
            parent = doc if len(path) == 1 else doc.get(path[0])
            if isinstance(parent, dict) and path[-1] in parent:
                seen.add(path)
        try:
            Spec.model_validate(doc)
            specs_valid += 1
        except ValidationError:
            pass

    draw()
    assert seen == set(LEAVES), sorted(set(LEAVES) - seen)
    assert specs_valid >= 50, specs_valid  # whole valid specs too, so the build is reached


@settings(FUZZ, max_examples=500)
@given(doc=spec_docs(), as_json=st.booleans(), how=uniform(["--dry-run", "--dry-run --json", "build", "transfer"]))
def test_fuzzed_spec(scratch, artifacts, doc: Any, as_json: bool, how: str) -> None:
    """A fuzzed spec file: `build --dry-run` exits 0 exactly when the schema accepts it; `build`
    exits 0 exactly when it is accepted and fits the memory limit, and writes only the
    artifact; `transfer` onto it follows the contract."""
    folder = scratch()
    path, data = write_doc(folder, doc, as_json)
    spec = accepted(data)
    if how == "transfer":
        # the target is built at the default 4G limit: keep an accepted one small
        assume(spec is None or not _too_big(spec, "64M"))
        shutil.copy(artifacts / "trained.cnas", folder / "a.cnas")
        args = ["transfer", "a.cnas", path.name, "-o", "out.cnas"]
    elif how == "build":
        args = ["build", path.name, "-o", "out.cnas", "--max-memory", BUILD_LIMIT]
    else:
        args = ["build", path.name, *how.split()]
    before = snapshot(folder)
    code, out, err = run_cli(args, folder)
    check_contract(code, err)
    check_files(code, before, folder)
    if how.startswith("--dry-run"):
        assert code == (0 if spec is not None else 2), (code, err, doc)
        if how.endswith("--json") and code == 0:
            json.loads(out)
    elif how == "build":
        fits = spec is not None and not _too_big(spec, BUILD_LIMIT)
        assert code == (0 if fits else 2), (code, err, doc)
        if code == 0:
            assert set(snapshot(folder)) == set(before) | {"out.cnas"}
            assert cnas_ir.load(folder / "out.cnas").spec == spec
    elif spec is None:
        assert code == 2, (code, err, doc)


def _too_big(spec: Spec, limit: str) -> bool:
    """Whether ``build --max-memory LIMIT`` refuses the accepted ``spec`` (size or numbering)."""
    try:
        check_size(spec, parse_size(limit))
    except InputError:
        return True
    return False


# ---------------------------------------------------------------------------------------------
# Artifacts: a small trained .cnas and its ONNX export, damaged

TINY = {**TINY_SYNTHETIC, "train": {**TINY_SYNTHETIC["train"], "epochs": 0}}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with spec.yaml (the tiny synthetic NASNet), target.yaml (the same cells, other
    classes), untrained.cnas, trained.cnas (zero epochs: weights and data.json) and
    model.onnx, made through the CLI."""
    folder = tmp_path_factory.mktemp("artifacts")
    (folder / "spec.yaml").write_text(yaml.safe_dump(TINY))
    (folder / "target.yaml").write_text(yaml.safe_dump({**TINY, "name": "target", "classes": 3}))
    steps = [
        ["build", "spec.yaml", "-o", "untrained.cnas"],
        ["train", "untrained.cnas", "--epochs", "0", "--device", "cpu", "-o", "trained.cnas"],
        ["export", "trained.cnas", "--onnx", "-o", "model.onnx"],
    ]
    for args in steps:
        with inside(folder):
            assert main(args) == 0, args
    shutil.rmtree(folder / "cnas-run", ignore_errors=True)
    return folder


def _rezip(members: dict[str, bytes]) -> bytes:
    """An artifact of ``members`` whose manifest lists their true checksums: damage inside a
    member then reaches the member's own parser and the verifier, past the checksums."""
    try:
        manifest = json.loads(members["cnas.json"])
        manifest["members"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items() if n != "cnas.json"}
        text = json.dumps(manifest)
    except (ValueError, TypeError):  # the manifest is what was damaged: keep it so
        text = members["cnas.json"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("cnas.json", text)
        for name, data in members.items():
            if name != "cnas.json":
                z.writestr(name, data)
    return buf.getvalue()


def _bytes_damage(draw: st.DrawFn, data: bytes) -> bytes:
    kind = draw(uniform(["flip", "truncate", "append"]))
    if kind == "truncate":
        return data[: draw(uniform(range(max(len(data), 1))))]
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=64))
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(uniform(range(len(out)))) if out else 0
        if out:
            out[i] ^= draw(st.integers(1, 255))
    return bytes(out)


_COLUMN_VALUES = [-1, 0, 1, 2, 3, 7, 127, 255, 2**15 - 1, -(2**15), 2**31 - 1, -(2**31), 2**62]


@st.composite
def damaged_artifact(draw: st.DrawFn, path: Path) -> bytes:
    """The .cnas at ``path`` damaged: bytes flipped, cut or appended anywhere; or inside one member
    with the checksums made right again: its bytes, a JSON member replaced by hostile JSON or
    a fuzzed spec, a graph column's entry set to an edge value, a weight made non-finite (and
    maybe flattened)."""
    data = path.read_bytes()
    where = draw(uniform(["file", "member", "json", "column", "weight"]))
    if where == "file":
        return _bytes_damage(draw, data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        members = {n: z.read(n) for n in z.namelist()}
    if where == "member":
        name = draw(uniform(sorted(members)))
        members[name] = _bytes_damage(draw, members[name])
    elif where == "json":
        name = draw(uniform(sorted(n for n in members if n.endswith(".json") and n != "cnas.json")))
        value = draw(spec_docs(rates=(0, 3)) if name == "spec.json" else HOSTILE)
        members[name] = json.dumps(value).encode()
    elif where == "column":
        columns = st_load(members["graph.safetensors"])
        name = draw(uniform(sorted(columns)))
        col = columns[name].copy()
        if col.size:
            info = np.iinfo(col.dtype) if col.dtype.kind in "iu" else None
            value = draw(uniform(_COLUMN_VALUES))
            if info is not None:
                value = min(max(value, info.min), info.max)
            elif col.dtype == np.bool_:
                value = bool(value)
            col[draw(uniform(range(col.size)))] = value
        columns[name] = col
        members["graph.safetensors"] = st_save(columns)
    else:
        weights = st_load(members["weights.safetensors"])
        name = draw(uniform(sorted(weights)))
        w = weights[name].copy().reshape(-1)
        w[draw(uniform(range(w.size)))] = draw(uniform([np.nan, np.inf, -np.inf, 1e38, 0.0]))
        weights[name] = w.reshape(weights[name].shape) if draw(st.booleans()) else w
        members["weights.safetensors"] = st_save(weights)
    return _rezip(members)


# prune in milliseconds: no fine-tuning, one minibatch of saliency
FAST_PRUNE = ["--finetune-epochs", "0", "--saliency-batches", "1", "--device", "cpu"]

ARTIFACT_COMMANDS = {
    "stats": ["stats", "a.cnas"],
    "stats --json": ["stats", "a.cnas", "--json"],
    "stats --markdown": ["stats", "a.cnas", "--markdown"],
    "dump": ["dump", "a.cnas"],
    "show": ["show", "a.cnas", "--cell", "1"],
    "show --graphml": ["show", "a.cnas", "--cell", "2", "--graphml", "out.graphml"],
    "show --dot --level channel": ["show", "a.cnas", "--cell", "1", "--dot", "out.dot", "--level", "channel"],
    "export": ["export", "a.cnas", "--onnx", "-o", "out.onnx", "--allow-untrained"],
    "eval": ["eval", "a.cnas", "--device", "cpu"],
    "transfer": ["transfer", "a.cnas", "target.yaml", "-o", "out.cnas"],
    "transfer --weights keep": ["transfer", "a.cnas", "target.yaml", "-o", "out.cnas", "--weights", "keep"],
    "train": ["train", "a.cnas", "--epochs", "0", "--device", "cpu", "-o", "out.cnas"],
    "prune": ["prune", "a.cnas", *FAST_PRUNE, "-o", "out.cnas"],
}


@settings(FUZZ, max_examples=200)
@given(data=st.data(), command=uniform(sorted(ARTIFACT_COMMANDS)))
def test_damaged_artifact(scratch, artifacts, data: st.DataObject, command: str) -> None:
    """Every command reading a damaged .cnas keeps the contract; prune may print its
    progress before failing."""
    folder = scratch()
    (folder / "a.cnas").write_bytes(data.draw(damaged_artifact(artifacts / "trained.cnas"), label="artifact"))
    shutil.copy(artifacts / "target.yaml", folder)
    before = snapshot(folder)
    code, _, err = run_cli(ARTIFACT_COMMANDS[command], folder)
    check_contract(code, err, progress=command == "prune")
    check_files(code, before, folder)


@settings(FUZZ, max_examples=40)
@given(data=st.data(), split=uniform(["test", "val", "train"]))
def test_damaged_onnx_model(scratch, artifacts, data: st.DataObject, split: str) -> None:
    """`eval MODEL.onnx` on a damaged export keeps the contract."""
    folder = scratch()
    raw = (artifacts / "model.onnx").read_bytes()
    (folder / "m.onnx").write_bytes(data.draw(st.composite(lambda draw: _bytes_damage(draw, raw))(), label="model"))
    before = snapshot(folder)
    code, _, err = run_cli(["eval", "m.onnx", "--device", "cpu", "--split", split], folder)
    check_contract(code, err)
    check_files(code, before, folder)


# ---------------------------------------------------------------------------------------------
# Command lines: a strategy derived from the click commands

COMMANDS = ["build", "stats", "show", "dump", "export", "eval", "transfer", "train", "prune"]

# Files each example's folder holds (copied from the artifacts), and names that are not there.
POOL = ["spec.yaml", "target.yaml", "untrained.cnas", "trained.cnas", "model.onnx", "empty.cnas", "notes.txt", "dir",
        "run", "missing.cnas", "missing.yaml", "missing/out.cnas", "out.cnas", "out.onnx", "out.png", "out.graphml",
        "out.dot", "out.svg", "out.txt", "dir/out.cnas", "é ü/out.cnas", "", "\udcff.cnas"]  # fmt: skip
DATA_VALUES = ["digits", "synthetic", "cifar10", "cifar10:missing", "folder:missing", "folder:dir", "folder:.",
               "imagenet", ":", "digits:x", "folder:"]  # fmt: skip
NUMBERS = ["0", "1", "2", "-1", "0.5", "1e-300", "1e308", "nan", "inf", "-inf", "x", "", "0x10", "1_000",
           "99999999999999999999999"]  # fmt: skip

# What may run: values that keep an example to milliseconds, for options that would otherwise
# train for hours, spawn processes or compile. Only these values of the option, or values its
# click type refuses (NUMBERS that are not in range), are drawn.
SAFE: dict[tuple[str, str], list[str] | None] = {
    ("train", "epochs"): ["0"],
    ("train", "nproc"): ["1"],
    ("prune", "nproc"): ["1"],
    ("train", "compile_"): None,  # minutes of torch.compile: never
    ("train", "workers"): ["0"],
    ("eval", "workers"): ["0"],
    ("prune", "workers"): ["0"],
    ("prune", "finetune_epochs"): ["0"],
    ("prune", "saliency_batches"): ["1", "2"],
}
GLOBAL_EXCLUDED = {"debug"}  # --debug shows tracebacks on purpose


def _refused(param: click.Parameter, value: str) -> bool:
    """Whether click refuses ``value`` for ``param`` (before the command runs)."""
    try:
        param.type.convert(value, param, None)
    except click.BadParameter:
        return True
    except Exception:  # noqa: BLE001 -- a type that fails otherwise is not a safe value either
        return False
    return False


_ESCAPED = st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)


def param_fragment(command: str, param: click.Parameter) -> st.SearchStrategy[list[str]]:
    """The argv words a fuzzed command line gives ``param``: nothing, a flag, or an option (or
    argument) with a value that fits its click type or does not."""
    if (command, param.name) in SAFE and SAFE[(command, param.name)] is None:
        return st.just([])
    t = param.type
    if isinstance(param, click.Option) and param.is_flag:
        return uniform([[], [param.opts[0]]])
    if isinstance(t, click.Choice):
        values = uniform([*map(str, t.choices), "", "CPU", "none"])
    elif isinstance(t, (click.types.IntParamType, click.types.FloatParamType)):
        values = uniform(NUMBERS)
    elif isinstance(t, (click.Path, click.types.StringParamType)):
        # what argv can hold: no NUL, and of the surrogates only those that stand for bytes
        # that are not UTF-8 (Python decodes argv with surrogateescape)
        text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00") | _ESCAPED, max_size=12)
        values = st.one_of(uniform(POOL + DATA_VALUES), text)
    else:
        raise TypeError(f"{command} {param.name}: no strategy for the click type {t!r}: teach tests/test_fuzz.py")
    safe = SAFE.get((command, param.name or ""))
    if safe is not None:
        values = st.one_of(uniform(safe), values.filter(lambda v: _refused(param, v)))
    if isinstance(param, click.Argument):
        words = values.map(lambda v: [v])
        return words if param.required else st.one_of(st.just([]), words)
    return st.one_of(st.just([]), values.map(lambda v: [param.opts[-1], v]))


def _command_params(name: str) -> list[click.Parameter]:
    return cli.commands[name].params


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    """A command line: global options, a command, its arguments in order and its options in
    any order, and now and then a word no command takes."""
    name = draw(uniform(COMMANDS))
    words: list[str] = []
    for p in cli.params:
        if p.name not in GLOBAL_EXCLUDED:
            words += draw(param_fragment("", p))
    args: list[str] = []
    options: list[list[str]] = []
    for p in _command_params(name):
        frag = draw(param_fragment(name, p))
        if isinstance(p, click.Argument):
            args += frag
        elif frag:
            options.append(frag)
    options = draw(st.permutations(options))
    junk = draw(uniform([[], [], [], ["--bogus"], ["extra"], ["-"], ["--"]]))
    rest = [w for frag in options for w in frag]
    tail = args + rest if draw(st.booleans()) else rest + args
    return [*words, name, *tail, *junk]


def _pool_folder(folder: Path, artifacts: Path) -> None:
    for name in ("spec.yaml", "target.yaml", "untrained.cnas", "trained.cnas", "model.onnx"):
        shutil.copy(artifacts / name, folder)
    (folder / "empty.cnas").write_bytes(b"")
    (folder / "notes.txt").write_text("not an artifact\n")
    (folder / "dir").mkdir()
    (folder / "run").mkdir()
    shutil.copy(artifacts / "trained.cnas", folder / "run" / "001-build.cnas")


def test_command_strategy_knows_every_option() -> None:
    """Every parameter of every fuzzed command has a strategy, and the safe-value table names
    only parameters that exist."""
    for name in COMMANDS:
        for p in _command_params(name):
            param_fragment(name, p)
    for p in cli.params:
        param_fragment("", p)
    known = {(n, p.name) for n in COMMANDS for p in _command_params(n)}
    assert set(SAFE) <= known, sorted(set(SAFE) - known)
    assert set(COMMANDS) | {"report", "experiment"} == set(cli.commands)


@settings(FUZZ, max_examples=200)
@given(argv=command_lines())
def test_fuzzed_command_line(scratch, artifacts, argv: list[str]) -> None:
    """A fuzzed command line keeps the contract: train and prune with zero epochs, the others
    on small artifacts."""
    folder = scratch()
    _pool_folder(folder, artifacts)
    before = snapshot(folder)
    code, _, err = run_cli(argv, folder)
    check_contract(code, err, progress="prune" in argv)
    check_files(code, before, folder)


# ---------------------------------------------------------------------------------------------
# Tiny specs through the whole chain: build, train zero epochs, prune without fine-tuning

# The shape keys stay tiny; everything else (data, recipe, search, dropout, stem) is fuzzed.
TINY_SHAPE = {("nasnet", k): v for k, v in TINY_SYNTHETIC["nasnet"].items() if k != "spatial_dropout"} | {
    ("input", "size"): 8,
    ("input", "channels"): 1,
    ("data", "name"): "synthetic",
}


@settings(FUZZ, max_examples=60)
@given(
    doc=spec_docs(fixed=TINY_SHAPE, rates=(0, 0, 3)),
    criterion=uniform(["random", "weight", "taylor"]),
)
def test_fuzzed_tiny_spec_trains_and_prunes(scratch, doc: Any, criterion: str) -> None:
    """A fuzzed tiny spec through build, `train --epochs 0` and `prune --finetune-epochs 0`:
    each step keeps the contract, and a step runs only when the one before succeeded."""
    folder = scratch()
    if isinstance(doc, dict):
        doc.pop("densenet", None)
        doc["space"] = "nasnet"
    path, _ = write_doc(folder, doc, as_json=False)
    steps = [
        ["build", path.name, "-o", "a.cnas", "--max-memory", BUILD_LIMIT],
        ["train", "a.cnas", "--epochs", "0", "--device", "cpu", "-o", "b.cnas"],
        ["prune", "b.cnas", *FAST_PRUNE, "--criterion", criterion, "-o", "c.cnas"],
    ]
    for args in steps:
        before = snapshot(folder)
        code, _, err = run_cli(args, folder)
        check_contract(code, err, progress=args[0] == "prune")
        check_files(code, before, folder)
        if code != 0:
            break
