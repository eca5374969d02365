"""The TensorRT engine cache: keying, atomic writes, the deserialisation check and rebuilds (stand-in engines)."""

from __future__ import annotations

import json

import pytest

from engines.backends import EngineCache, EngineKey, Precision, ShapeProfile

PROFILE = ShapeProfile({"image": ((1, 1, 64, 64, 64), (1, 1, 64, 64, 64), (4, 1, 64, 64, 64))})
GOOD = b"ENGINE:good"


def _deserialize(data: bytes):
    if not data.startswith(b"ENGINE:"):
        raise RuntimeError("not an engine")
    return data.decode()


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "net.onnx"
    path.write_bytes(b"graph-v1")
    return path


def _key(onnx_file, **changes) -> EngineKey:
    arguments = {"tensorrt_version": "10.9.0", "compute_capability": "9.0", "precision": "fp16", "profiles": [PROFILE]}
    arguments.update(changes)
    return EngineKey.create("vista3d.encoder", onnx_file, **arguments)


def test_each_part_of_the_key_changes_the_engine_file(onnx_file, tmp_path):
    cache = EngineCache(tmp_path / "engines")
    base = cache.path_for(_key(onnx_file))
    wider = ShapeProfile({"image": ((1, 1, 64, 64, 64), (1, 1, 64, 64, 64), (8, 1, 64, 64, 64))})
    variants = [
        _key(onnx_file, tensorrt_version="11.0.0"),
        _key(onnx_file, compute_capability="8.0"),
        _key(onnx_file, precision="fp32"),
        _key(onnx_file, profiles=[wider]),
    ]
    paths = {cache.path_for(key) for key in variants}
    assert base not in paths and len(paths) == len(variants)
    onnx_file.write_bytes(b"graph-v2")
    assert cache.path_for(_key(onnx_file)) != base


def test_store_writes_the_engine_and_a_sidecar_without_leftovers(onnx_file, tmp_path):
    cache = EngineCache(tmp_path / "engines")
    key = _key(onnx_file)
    path = cache.store(key, GOOD)
    assert path.read_bytes() == GOOD
    assert json.loads(path.with_suffix(".json").read_text())["precision"] == "fp16"
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    assert cache.entries()[0]["network"] == "vista3d.encoder"


def test_a_bad_engine_is_moved_aside_and_reported_missing(onnx_file, tmp_path):
    cache = EngineCache(tmp_path / "engines")
    key = _key(onnx_file)
    path = cache.store(key, b"garbage")
    assert cache.load(key, _deserialize) is None
    assert not path.exists()
    assert path.with_suffix(".engine.bad").read_bytes() == b"garbage"


def test_ensure_rebuilds_a_bad_engine_and_keeps_a_good_one(onnx_file, tmp_path):
    cache = EngineCache(tmp_path / "engines")
    key = _key(onnx_file)
    cache.store(key, b"garbage")
    builds = []

    def build() -> bytes:
        builds.append(1)
        return GOOD

    engine, built = cache.ensure(key, build, _deserialize)
    assert (engine, built, len(builds)) == ("ENGINE:good", True, 1)
    engine, built = cache.ensure(key, build, _deserialize)
    assert (engine, built, len(builds)) == ("ENGINE:good", False, 1)


def test_an_engine_that_does_not_deserialise_right_after_building_is_not_cached(onnx_file, tmp_path):
    cache = EngineCache(tmp_path / "engines")
    key = _key(onnx_file)
    with pytest.raises(RuntimeError, match="just built for vista3d.encoder does not deserialise"):
        cache.ensure(key, lambda: b"broken", _deserialize)
    assert not cache.path_for(key).exists()


def test_profiles_are_validated():
    with pytest.raises(ValueError, match="min <= opt <= max"):
        ShapeProfile({"image": ((1, 1, 64), (1, 1, 32), (1, 1, 128))})
    with pytest.raises(ValueError, match="at least one ShapeProfile"):
        EngineKey("n", "0", "10", "9.0", Precision.FP16, ()).create("n", __file__, "10", "9.0", "fp16", [])
