"""The ``.cnas`` artifact format: a zip of JSON and safetensors, never pickle.

Layout (format version 2)::

    cnas.json            manifest: {"format": "cnas-ir", "version": 2, "producer": ...,
                         "members": {name: sha256 hex}} -- always the first member
    spec.json            the validated spec (canonical JSON)
    graph.safetensors    the IR columns (group, vertex and bundle columns of cnas_ir.ir.Graph)
    weights.safetensors  float32 weights by name, one-shot shapes (absent before training)
    history.json         list of events (build, train, prune, ...)
    data.json            what the weights were trained on (``Graph.data``): {} before training,
                         else {"name": ..., "mean": [per channel], "std": [per channel]} and,
                         for an image folder, "classes": [class names in label order]

Version 1 is version 2 without ``data.json``; it still loads (with empty ``Graph.data``).

Loading checks, in order: a zip at all (else "not a cnas-ir artifact" or "truncated"); before
anything is decompressed, that every member is one of the format's (at most six), that a
JSON member's declared size is at most :data:`JSON_RATIO` times its compressed size and at
most :data:`JSON_CEILING`, and that a safetensors member is stored uncompressed within the
file; then the manifest's format name and version (a newer version is refused), every
member's sha256, JSON nesting (at most :data:`JSON_DEPTH`), each safetensors header's length
field (within its member and :data:`HEADER_CEILING`), the spec, the IR verifier, and the
weights' names and shapes. Loading never executes code:
JSON and safetensors are pure data. Saving writes a temp file beside the target and renames
it into place, so a crash never leaves a half-written artifact under the real name.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from cnas_ir import __version__
from cnas_ir.errors import CnasError, InputError, RunFailure, reading
from cnas_ir.ir import BUNDLE_COLUMNS, GROUP_COLUMNS, VERTEX_COLUMNS, Graph, VerifyError
from cnas_ir.spec import parse_spec
from cnas_ir.weights import weight_table

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "atomic_write", "load", "save"]

FORMAT_NAME = "cnas-ir"
FORMAT_VERSION = 2
_MANIFEST = "cnas.json"
_ZIP_MAGIC = b"PK\x03\x04"
_JSON_MEMBERS = (_MANIFEST, "spec.json", "history.json", "data.json")
_TENSOR_MEMBERS = ("graph.safetensors", "weights.safetensors")

# Limits checked before a member is decompressed or parsed (module docstring).
JSON_RATIO = 1000  # declared size / compressed size of a JSON member (deflate's own limit is ~1032)
JSON_CEILING = 64 << 20  # bytes of one JSON member; a long search's history is a few hundred KiB
JSON_DEPTH = 32  # nesting of a JSON member; the format's deepest is 4 (history events)
HEADER_CEILING = 100 << 20  # bytes of a safetensors header (its JSON index of tensors)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename.

    Any :class:`OSError` (a full disk, a file-size limit, a missing folder) becomes one
    :class:`RunFailure` naming ``path``. On every failure, Ctrl-C included, the temp file is
    removed and a file already at ``path`` is left as it was.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    except OSError as e:
        raise RunFailure(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        try:
            # mkstemp creates 0600; give the file the mode a plain open() would (0666 & ~umask).
            os.fchmod(fd, 0o666 & ~_umask())
            view = memoryview(data)
            while view:  # a write may stop short (at a file-size limit, before failing)
                view = view[os.write(fd, view) :]
            os.fsync(fd)  # a full disk may only show here; it must fail before the rename
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # gone already, or not removable: the error to report is the one above
        if isinstance(e, OSError):
            raise RunFailure(f"{path}: cannot write ({e.strerror or e})") from None
        raise


def _members(graph: Graph) -> dict[str, bytes]:
    columns = {
        name: np.ascontiguousarray(getattr(graph, name)) for name in GROUP_COLUMNS + VERTEX_COLUMNS + BUNDLE_COLUMNS
    }
    members = {
        "spec.json": graph.spec.to_json().encode(),
        "graph.safetensors": st_save(columns),
        "history.json": json.dumps(list(graph.history), indent=1).encode(),
        "data.json": json.dumps(graph.data, sort_keys=True).encode(),
    }
    if graph.weights:
        members["weights.safetensors"] = st_save({k: np.ascontiguousarray(v) for k, v in graph.weights.items()})
    return members


def to_bytes(graph: Graph) -> bytes:
    """The artifact as bytes (what :func:`save` writes)."""
    members = _members(graph)
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "producer": f"cnas-ir {__version__}",
        "members": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()},
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(_MANIFEST, json.dumps(manifest, indent=1), compress_type=zipfile.ZIP_DEFLATED)
        for name, data in members.items():
            method = zipfile.ZIP_DEFLATED if name.endswith(".json") else zipfile.ZIP_STORED
            z.writestr(name, data, compress_type=method)
    return buf.getvalue()


def save(graph: Graph, path: str | Path) -> Path:
    """Write ``graph`` to ``path`` atomically; returns the path."""
    path = Path(path)
    atomic_write(path, to_bytes(graph))
    return path


def _corrupt(path: Path, why: str) -> InputError:
    return InputError(f"{path}: corrupt .cnas artifact ({why})")


def load(path: str | Path) -> Graph:
    """Read an artifact written by :func:`save`; every failure is a one-line :class:`CnasError`."""
    path = Path(path)
    with reading(path, "artifact"), open(path, "rb") as f:
        head = f.read(4)
    if head != _ZIP_MAGIC:
        raise InputError(f"{path}: not a cnas-ir artifact (not a zip archive)")
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if _MANIFEST not in {i.filename for i in infos}:
                raise InputError(f"{path}: not a cnas-ir artifact (a zip without {_MANIFEST})")
            _check_members(path, infos, path.stat().st_size)
            data = {info.filename: z.read(info) for info in infos}
    except zipfile.BadZipFile as e:
        if "CRC" in str(e):
            raise _corrupt(path, "checksum mismatch") from None
        raise InputError(f"{path}: truncated or damaged .cnas artifact ({e})") from None
    except (OSError, EOFError, ValueError, NotImplementedError) as e:
        # zlib errors surface as zlib.error (a subclass of Exception); handled below.
        raise _corrupt(path, str(e) or e.__class__.__name__) from None
    except CnasError:
        raise
    except Exception as e:  # zlib.error and friends from a damaged deflate stream
        raise _corrupt(path, f"{e.__class__.__name__}: {e}") from None
    return _from_members(path, data)


def _check_members(path: Path, infos: list[zipfile.ZipInfo], file_size: int) -> None:
    """The zip's directory against the format, before anything is decompressed: known members
    only, each once; JSON members within :data:`JSON_RATIO` and :data:`JSON_CEILING`;
    safetensors members stored, their declared sizes equal and inside the file."""
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        if name not in _JSON_MEMBERS + _TENSOR_MEMBERS:
            extra = len(infos) - len([i for i in infos if i.filename in _JSON_MEMBERS + _TENSOR_MEMBERS])
            raise _corrupt(path, f"member {name[:60]!r} is not part of the format ({extra:,} such members)")
        if name in seen:
            raise _corrupt(path, f"member {name} appears twice")
        seen.add(name)
        if name in _JSON_MEMBERS:
            limit = min(JSON_CEILING, JSON_RATIO * max(info.compress_size, 1))
            if info.file_size > limit:
                raise _corrupt(
                    path,
                    f"member {name} declares {info.file_size:,} bytes from {info.compress_size:,} compressed "
                    f"(at most {JSON_RATIO}x and {JSON_CEILING >> 20} MiB)",
                )
        elif info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise _corrupt(path, f"member {name} is compressed; the format stores it as is")
        elif info.header_offset + info.compress_size > file_size:
            raise _corrupt(path, f"member {name} declares {info.file_size:,} bytes; the file has {file_size:,}")


def _json(path: Path, name: str, raw: bytes) -> Any:
    """A JSON member parsed, once its nesting is known to be at most :data:`JSON_DEPTH` (counted
    over the brackets outside strings, without recursion)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _corrupt(path, f"{name} is not UTF-8 JSON") from None
    if _nesting(text) > JSON_DEPTH:
        raise _corrupt(path, f"{name} nests deeper than {JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _corrupt(path, f"{name}: bad JSON: {e}") from None


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _nesting(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in JSON ``text`` (strings skipped), vectorised."""
    codes = np.frombuffer(_JSON_STRING.sub("", text).encode("utf-8"), np.uint8)
    steps = (np.isin(codes, (ord("["), ord("{")))).astype(np.int64) - np.isin(codes, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def _tensors(path: Path, name: str, raw: bytes) -> dict[str, np.ndarray]:
    """A safetensors member loaded, once its header's length field (the first 8 bytes, little
    endian) is known to fit the member and :data:`HEADER_CEILING`."""
    n = int.from_bytes(raw[:8], "little") if len(raw) >= 8 else -1
    if not 0 < n <= min(len(raw) - 8, HEADER_CEILING):
        raise _corrupt(path, f"{name}: header length {n:,} out of range for {len(raw):,} bytes")
    try:
        return st_load(raw)
    except (SafetensorError, ValueError, TypeError) as e:
        raise _corrupt(path, f"{name}: bad safetensors: {e}") from None


def _from_members(path: Path, data: dict[str, bytes]) -> Graph:
    manifest = _json(path, _MANIFEST, data[_MANIFEST])
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise InputError(
            f"{path}: not a cnas-ir artifact (manifest format is {manifest.get('format')!r})"
            if isinstance(manifest, dict)
            else f"{path}: not a cnas-ir artifact"
        )
    version = manifest.get("version")
    if not isinstance(version, int) or version < 1:
        raise _corrupt(path, f"format version {version!r}")
    if version > FORMAT_VERSION:
        raise InputError(
            f"{path}: written by a newer cnas-ir (format version {version}; this cnas-ir {__version__} "
            f"reads up to {FORMAT_VERSION}); upgrade cnas-ir"
        )
    listed = manifest.get("members")
    if not isinstance(listed, dict):
        raise _corrupt(path, "manifest lists no members")
    unlisted = sorted(set(data) - set(listed) - {_MANIFEST})
    if unlisted:
        raise _corrupt(path, f"member {unlisted[0]} is not in the manifest")
    for name, digest in listed.items():
        if name not in data:
            raise _corrupt(path, f"member {name} is missing")
        if hashlib.sha256(data[name]).hexdigest() != digest:
            raise _corrupt(path, f"member {name} does not match its checksum")
    for required in ("spec.json", "graph.safetensors", "history.json") + (("data.json",) if version >= 2 else ()):
        if required not in listed:
            raise _corrupt(path, f"member {required} is missing")
    spec_data = _json(path, "spec.json", data["spec.json"])
    history = _json(path, "history.json", data["history.json"])
    spec = parse_spec(spec_data, f"{path}:spec.json")
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise _corrupt(path, "history.json is not a list of events")
    data_info = _data_info(path, data["data.json"], spec.input.channels, spec.classes) if "data.json" in listed else {}
    columns = _tensors(path, "graph.safetensors", data["graph.safetensors"])
    weights = (
        _tensors(path, "weights.safetensors", data["weights.safetensors"]) if "weights.safetensors" in listed else {}
    )
    wanted = GROUP_COLUMNS + VERTEX_COLUMNS + BUNDLE_COLUMNS
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise _corrupt(path, f"graph column {missing[0]} is missing")
    try:
        graph = Graph(
            spec=spec, weights=weights, history=tuple(history), data=data_info, **{c: columns[c] for c in wanted}
        )
        graph.verify()
    except VerifyError as e:
        raise _corrupt(path, f"invalid graph: {e}") from None
    _check_weights(path, graph)
    return graph


def _data_info(path: Path, raw: bytes, channels: int, classes: int) -> dict[str, Any]:
    """``data.json`` checked: a mapping, a string ``name``, ``mean``/``std`` lists of ``channels``
    finite numbers (std > 0) and ``classes`` a list of ``classes`` strings, each where present."""
    info = _json(path, "data.json", raw)
    if not isinstance(info, dict):
        raise _corrupt(path, "data.json is not a mapping")
    if "name" in info and not isinstance(info["name"], str):
        raise _corrupt(path, "data.json: name is not a string")
    for key in ("mean", "std"):
        v = info.get(key)
        if v is None:
            continue
        if (
            not isinstance(v, list)
            or len(v) != channels
            or not all(isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m) for m in v)
            or (key == "std" and not all(m > 0 for m in v))
        ):
            raise _corrupt(path, f"data.json: {key} must be {channels} finite numbers (std > 0)")
    names = info.get("classes")
    if names is not None and not (
        isinstance(names, list) and len(names) == classes and all(isinstance(c, str) for c in names)
    ):
        raise _corrupt(path, f"data.json: classes is not a list of {classes} names")
    return info


def _check_weights(path: Path, graph: Graph) -> None:
    if not graph.weights:
        return
    table = weight_table(graph)
    names = set(graph.weights)
    if names != set(table):
        extra = sorted(names - set(table))
        lack = sorted(set(table) - names)
        what = f"unexpected weight {extra[0]}" if extra else f"weight {lack[0]} is missing"
        raise _corrupt(path, what)
    for name, info in table.items():
        w = graph.weights[name]
        if w.shape != info.shape or w.dtype != np.float32:
            raise _corrupt(path, f"weight {name} has shape {w.shape} {w.dtype}, expected {info.shape} float32")
        if not np.isfinite(w).all():  # training stops before a non-finite weight is ever saved
            raise _corrupt(path, f"weight {name} holds non-finite values")
