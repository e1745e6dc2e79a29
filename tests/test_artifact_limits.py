"""Hostile ``.cnas`` files (issue 19): each is refused in one line before it costs memory.

The files are made here, by hand, with :mod:`zipfile`: a deflate bomb (declared and lying
sizes), thousands of extra members, a compressed or oversized tensor member, a safetensors
header whose length field claims 2^40 bytes, and JSON nested far deeper than the format's.
Each is consistent everywhere else (the manifest lists the right checksums), so the refusal
comes from the limit under test and not from an earlier check. Time and peak memory of the
same cases in a fresh process are measured by ``benchmarks/bench_edges.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import cnas_ir
from cnas_ir.errors import InputError
from cnas_ir.format import HEADER_CEILING, JSON_CEILING, JSON_DEPTH, JSON_RATIO, load, to_bytes
from cnas_ir.weights import weight_table
from helpers import EXAMPLES


def members_of(artifact: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(artifact)) as z:
        return {name: z.read(name) for name in z.namelist()}


def rezip(members: dict[str, bytes], *, add: Callable[[zipfile.ZipFile], None] | None = None) -> bytes:
    """An artifact of ``members`` (the manifest's checksums recomputed, the compression the
    format uses), then whatever ``add`` writes into the zip."""
    manifest = json.loads(members["cnas.json"])
    manifest["members"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items() if n != "cnas.json"}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("cnas.json", json.dumps(manifest), compress_type=zipfile.ZIP_DEFLATED)
        for name, data in members.items():
            if name != "cnas.json":
                method = zipfile.ZIP_DEFLATED if name.endswith(".json") else zipfile.ZIP_STORED
                z.writestr(name, data, compress_type=method)
        if add is not None:
            add(z)
    return buf.getvalue()


def deflated_zeros(z: zipfile.ZipFile, name: str, size: int) -> None:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    chunk = b"\0" * (16 << 20)
    with z.open(info, "w") as f:
        for start in range(0, size, len(chunk)):
            f.write(chunk[: size - start])


def refused(tmp_path: Path, data: bytes, fragment: str) -> str:
    path = tmp_path / "hostile.cnas"
    path.write_bytes(data)
    with pytest.raises(InputError) as e:
        load(path)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) <= 300 and str(path) in msg and fragment in msg, msg
    return msg


@pytest.fixture(scope="module")
def trained() -> dict[str, bytes]:
    """The members of examples/tiny.yaml's artifact with (random) weights."""
    g = cnas_ir.build(EXAMPLES / "tiny.yaml")
    rng = np.random.default_rng(0)
    w = {n: rng.standard_normal(i.shape).astype(np.float32) for n, i in weight_table(g).items()}
    return members_of(to_bytes(g.replace(weights=w)))


def test_rezip_of_the_members_loads(trained: dict[str, bytes], tmp_path: Path) -> None:
    # The cases below differ from this file in one thing each.
    (tmp_path / "ok.cnas").write_bytes(rezip(trained))
    assert load(tmp_path / "ok.cnas").weights


def test_deflate_bomb_is_refused_by_its_declared_size(trained: dict[str, bytes], tmp_path: Path) -> None:
    # history.json expands to 80 MiB of zeros from about 80 KiB: over the ceiling, and at
    # deflate's ratio (~1030) over JSON_RATIO. Nothing is decompressed.
    size = 80 << 20
    assert size > JSON_CEILING
    members = {k: v for k, v in trained.items() if k != "history.json"}
    data = rezip(members, add=lambda z: deflated_zeros(z, "history.json", size))
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.getinfo("history.json").compress_size < size // JSON_RATIO
    refused(tmp_path, data, f"member history.json declares {size:,} bytes")


def test_deflate_bomb_under_the_ceiling_is_refused_by_its_ratio(trained: dict[str, bytes], tmp_path: Path) -> None:
    members = {k: v for k, v in trained.items() if k != "history.json"}
    data = rezip(members, add=lambda z: deflated_zeros(z, "history.json", 8 << 20))
    refused(tmp_path, data, f"at most {JSON_RATIO}x")


def test_member_that_expands_beyond_its_declared_size_is_corrupt(trained: dict[str, bytes], tmp_path: Path) -> None:
    # A lying directory: history.json's deflate stream holds 8 MiB, its entries declare 1,000
    # bytes (inside every limit). zipfile stops at the declared size; the CRC then fails.
    members = {k: v for k, v in trained.items() if k != "history.json"}
    data = bytearray(rezip(members, add=lambda z: deflated_zeros(z, "history.json", 8 << 20)))
    entry = _central_entry(bytes(data), "history.json")
    local = int.from_bytes(data[entry + 42 : entry + 46], "little")
    data[entry + 24 : entry + 28] = data[local + 22 : local + 26] = (1000).to_bytes(4, "little")
    refused(tmp_path, bytes(data), "checksum mismatch")


def _central_entry(data: bytes, name: str) -> int:
    """Offset of ``name``'s entry in the zip's central directory."""
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:
        n = int.from_bytes(data[pos + 28 : pos + 30], "little")
        if data[pos + 46 : pos + 46 + n] == name.encode():
            return pos
        pos = data.find(b"PK\x01\x02", pos + 46 + n)
    raise AssertionError(name)


def test_ten_thousand_extra_members_are_refused(trained: dict[str, bytes], tmp_path: Path) -> None:
    def add(z: zipfile.ZipFile) -> None:
        for i in range(10_000):
            z.writestr(f"extra/{i}.bin", b"x")

    refused(tmp_path, rezip(trained, add=add), "'extra/0.bin' is not part of the format (10,000 such members)")


def test_a_member_twice_is_refused(trained: dict[str, bytes], tmp_path: Path) -> None:
    def add(z: zipfile.ZipFile) -> None:
        z.writestr("spec.json", trained["spec.json"])

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile's "Duplicate name"
        data = rezip(trained, add=add)
    refused(tmp_path, data, "member spec.json appears twice")


def test_compressed_tensor_member_is_refused(trained: dict[str, bytes], tmp_path: Path) -> None:
    members = {k: v for k, v in trained.items() if k != "weights.safetensors"}

    def add(z: zipfile.ZipFile) -> None:
        z.writestr("weights.safetensors", trained["weights.safetensors"], compress_type=zipfile.ZIP_DEFLATED)

    data = rezip(members, add=add)
    refused(tmp_path, data, "member weights.safetensors is compressed")


def test_tensor_member_larger_than_the_file_is_refused(trained: dict[str, bytes], tmp_path: Path) -> None:
    # The directory claims 2 GiB stored for graph.safetensors (both sizes): more than the file.
    data = bytearray(rezip(trained))
    entry = _central_entry(bytes(data), "graph.safetensors")
    data[entry + 20 : entry + 28] = ((2 << 30) - 1).to_bytes(4, "little") * 2
    refused(tmp_path, bytes(data), "member graph.safetensors declares 2,147,483,647 bytes")


@pytest.mark.parametrize("claim", [1 << 40, 0, HEADER_CEILING + 1])
def test_safetensors_header_length_out_of_range(trained: dict[str, bytes], tmp_path: Path, claim: int) -> None:
    members = dict(trained)
    members["graph.safetensors"] = claim.to_bytes(8, "little") + trained["graph.safetensors"][8:]
    refused(tmp_path, rezip(members), f"graph.safetensors: header length {claim:,} out of range")


@pytest.mark.parametrize("member", ["history.json", "spec.json", "data.json", "cnas.json"])
def test_deep_json_is_refused_before_parsing(trained: dict[str, bytes], tmp_path: Path, member: str) -> None:
    # 100,000 levels: json.loads would raise RecursionError; the count stops it first.
    deep = b"[" * 100_000 + b"]" * 100_000
    members = dict(trained)
    if member == "cnas.json":
        data = bytearray(rezip(members))
        buf = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as zin, zipfile.ZipFile(buf, "w") as zout:
            for name in zin.namelist():
                zout.writestr(name, deep if name == member else zin.read(name))
        data = buf.getvalue()
    else:
        members[member] = deep
        data = rezip(members)
    refused(tmp_path, data, f"{member} nests deeper than {JSON_DEPTH} levels")


def test_brackets_inside_strings_do_not_count(trained: dict[str, bytes], tmp_path: Path) -> None:
    members = dict(trained)
    history = json.loads(trained["history.json"])
    history.append({"pass": "note", "text": "[" * 1000 + '\\"{' * 100})
    members["history.json"] = json.dumps(history).encode()
    (tmp_path / "ok.cnas").write_bytes(rezip(members))
    assert load(tmp_path / "ok.cnas").history[-1]["text"].startswith("[[[")


def test_member_not_in_the_manifest_is_refused(trained: dict[str, bytes], tmp_path: Path) -> None:
    data = rezip({k: v for k, v in trained.items() if k != "data.json"}, add=lambda z: z.writestr("data.json", "{}"))
    refused(tmp_path, data, "member data.json is not in the manifest")


@pytest.mark.slow
def test_paper_config_with_weights_still_loads(paper_graph, tmp_path: Path) -> None:
    # The largest artifact the suite makes: 9.9 M channel edges, 9.9 M weights; its safetensors
    # headers and JSON members are far inside the limits.
    w = {n: np.zeros(i.shape, np.float32) for n, i in weight_table(paper_graph).items()}
    path = tmp_path / "paper.cnas"
    cnas_ir.save(paper_graph.replace(weights=w), path)
    with zipfile.ZipFile(path) as z:
        header = int.from_bytes(z.read("weights.safetensors")[:8], "little")
        history = z.getinfo("history.json").file_size
    assert header < HEADER_CEILING // 50 and history < JSON_CEILING // 1000
    assert load(path).weights.keys() == w.keys()
