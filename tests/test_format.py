"""The .cnas format: round trips, and one-line refusals of damaged or foreign files."""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile

import numpy as np
import pytest

import cnas_ir
from cnas_ir.dump import dump
from cnas_ir.errors import InputError
from cnas_ir.format import FORMAT_VERSION, load, save, to_bytes
from cnas_ir.weights import weight_table


def _with_weights(g):
    rng = np.random.default_rng(0)
    w = {n: rng.standard_normal(i.shape).astype(np.float32) for n, i in weight_table(g).items()}
    return g.replace(weights=w)


def _pruned(g, seed=0):
    rng = np.random.default_rng(seed)
    alive = g.alive.copy()
    x = g.x_ids
    alive[x[rng.random(x.size) < 0.3]] = False
    sal = g.saliency.copy()
    sal[x] = rng.random(x.size).astype(np.float32)
    return g.replace(alive=alive, saliency=sal).with_event({"pass": "test-prune"})


def test_round_trip_is_exact(tiny_graph, tmp_path):
    g = _with_weights(_pruned(tiny_graph))
    path = save(g, tmp_path / "a.cnas")
    back = load(path)
    for name in ("kind", "cell", "node", "op", "start", "size", "res", "alive", "src", "saliency",
                 "bundle_kind", "bundle_src", "bundle_dst"):  # fmt: skip
        np.testing.assert_array_equal(getattr(back, name), getattr(g, name))
    assert back.spec == g.spec
    assert back.history == g.history
    assert set(back.weights) == set(g.weights)
    for k, v in g.weights.items():
        np.testing.assert_array_equal(back.weights[k], v)
    assert dump(back) == dump(g)


def test_save_load_dump_identical(tiny_graph, tmp_path):
    save(tiny_graph, tmp_path / "t.cnas")
    assert dump(load(tmp_path / "t.cnas")) == dump(tiny_graph)


def test_atomic_save_leaves_old_file_on_failure(tiny_graph, tmp_path, monkeypatch):
    path = save(tiny_graph, tmp_path / "keep.cnas")
    before = path.read_bytes()
    import cnas_ir.format as fmt

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(fmt.os, "replace", boom)
    with pytest.raises(RuntimeError):
        save(_pruned(tiny_graph), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.cnas"]  # no temp file left


def _expect(path, fragment):
    with pytest.raises(InputError) as e:
        load(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and fragment in msg, msg


def test_truncated(tiny_graph, tmp_path):
    data = to_bytes(tiny_graph)
    for cut in (len(data) // 2, len(data) - 10, 100):
        p = tmp_path / f"cut{cut}.cnas"
        p.write_bytes(data[:cut])
        _expect(p, "truncated")


def test_every_flipped_byte_is_refused_or_harmless(tiny_graph, tmp_path):
    # Flip bytes all over the file: each load either fails with a one-line InputError or (a
    # byte in zip padding/metadata nothing reads) gives back exactly the same graph.
    data = bytearray(to_bytes(_with_weights(tiny_graph)))
    p = tmp_path / "f.cnas"
    reference = dump(load_bytes(bytes(data), p))
    refused = 0
    for pos in range(0, len(data), max(1, len(data) // 300)):
        bad = bytearray(data)
        bad[pos] ^= 0x20
        p.write_bytes(bytes(bad))
        try:
            assert dump(load(p)) == reference
        except InputError as e:
            assert "\n" not in str(e)
            refused += 1
    assert refused > 250


def load_bytes(data: bytes, path):
    path.write_bytes(data)
    return load(path)


def test_flipped_byte_in_weights_is_corrupt(tiny_graph, tmp_path):
    data = bytearray(to_bytes(_with_weights(tiny_graph)))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = z.getinfo("weights.safetensors")
    pos = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2
    data[pos] ^= 0xFF
    p = tmp_path / "w.cnas"
    p.write_bytes(bytes(data))
    _expect(p, "corrupt")


def test_json_renamed_is_foreign(tmp_path):
    p = tmp_path / "spec.cnas"
    p.write_text(json.dumps({"name": "x"}))
    _expect(p, "not a cnas-ir artifact")


def test_foreign_zip(tmp_path):
    p = tmp_path / "other.cnas"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("hello.txt", "hi")
    _expect(p, "not a cnas-ir artifact")


def _rewrite_manifest(src: bytes, change) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(src)) as zin, zipfile.ZipFile(out, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "cnas.json":
                m = json.loads(data)
                change(m)
                data = json.dumps(m).encode()
            zout.writestr(name, data)
    return out.getvalue()


def test_newer_version_refused(tiny_graph, tmp_path):
    p = tmp_path / "new.cnas"
    p.write_bytes(_rewrite_manifest(to_bytes(tiny_graph), lambda m: m.update(version=FORMAT_VERSION + 1)))
    _expect(p, "newer cnas-ir")


def test_foreign_manifest(tiny_graph, tmp_path):
    p = tmp_path / "f.cnas"
    p.write_bytes(_rewrite_manifest(to_bytes(tiny_graph), lambda m: m.update(format="other-tool")))
    _expect(p, "not a cnas-ir artifact")


def test_structurally_invalid_graph_refused(tiny_graph, tmp_path):
    # A consistent file (checksums fine) whose graph breaks an invariant: a live x copying a
    # dead z channel. The verifier catches it at load.
    alive = tiny_graph.alive.copy()
    z = int(np.flatnonzero(tiny_graph.kind == 7)[0])
    alive[tiny_graph.group_slice(z)] = False
    p = tmp_path / "bad.cnas"
    p.write_bytes(to_bytes(tiny_graph.replace(alive=alive)))
    _expect(p, "invalid graph")


def test_weights_of_wrong_shape_refused(tiny_graph, tmp_path):
    g = _with_weights(tiny_graph)
    name = next(iter(g.weights))
    w = dict(g.weights)
    w[name] = np.zeros((1,), np.float32)
    p = tmp_path / "w.cnas"
    p.write_bytes(to_bytes(g.replace(weights=w)))
    _expect(p, "weight")


def test_missing_and_directory(tmp_path):
    _expect(tmp_path / "nope.cnas", "no such artifact")
    _expect(tmp_path, "folder")


def test_api_build_from_mapping_and_path(tmp_path):
    g1 = cnas_ir.build({"name": "m", "input": {"channels": 1, "size": 8}, "nasnet": {"channels": 2, "stacks": 1}})
    y = tmp_path / "m.yaml"
    y.write_text("name: m\ninput: {channels: 1, size: 8}\nnasnet: {channels: 2, stacks: 1}\n")
    g2 = cnas_ir.build(y)
    assert dump(g1) == dump(g2)
    cnas_ir.save(g1, tmp_path / "m.cnas")
    assert dump(cnas_ir.load(tmp_path / "m.cnas")) == dump(g1)


def test_saved_files_get_the_umask_mode(tiny_graph, tmp_path):
    # mkstemp's private 0600 must not leak into the user's artifacts
    old = os.umask(0o022)
    try:
        path = save(tiny_graph, tmp_path / "m.cnas")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
