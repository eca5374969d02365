"""Where built TensorRT engines live: ``M3EDGE_HOME/engines/<network>/<key>.engine`` plus a JSON sidecar.

An engine is only valid for the exact ONNX graph, TensorRT version, GPU compute capability, precision and shape
profiles it was built with, so those five make the key. Writes are atomic (temporary file, fsync, rename), so a
worker never sees half an engine. ``load`` checks that a cached engine deserialises; a bad one is moved aside and
reported as missing. ``ensure`` (used by ``m3edge engines build``, never on the request path) rebuilds what is
missing or bad.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_node.private_files import write_bytes_atomically
from engines.backends.base import Precision, ShapeProfile

__all__ = ["EngineKey", "EngineCache", "file_sha256"]

logger = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. ``digest`` names the file."""

    network: str  # e.g. "vista3d.encoder", "brats", "cxr.densenet121-res224-all"
    onnx_sha256: str
    tensorrt_version: str
    compute_capability: str  # "8.0", "9.0", ...
    precision: Precision
    profiles: tuple[str, ...]  # ShapeProfile.describe() of each profile, in order

    @classmethod
    def create(
        cls,
        network: str,
        onnx_path: Path,
        tensorrt_version: str,
        compute_capability: str,
        precision: Precision | str,
        profiles: Sequence[ShapeProfile],
    ) -> EngineKey:
        if not profiles:
            raise ValueError("an engine needs at least one ShapeProfile")
        return cls(
            network=network,
            onnx_sha256=file_sha256(onnx_path),
            tensorrt_version=str(tensorrt_version),
            compute_capability=str(compute_capability),
            precision=Precision(precision),
            profiles=tuple(profile.describe() for profile in profiles),
        )

    @property
    def digest(self) -> str:
        text = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def as_dict(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "onnx_sha256": self.onnx_sha256,
            "tensorrt_version": self.tensorrt_version,
            "compute_capability": self.compute_capability,
            "precision": self.precision.value,
            "profiles": list(self.profiles),
        }


class EngineCache:
    """A directory of engines keyed by ``EngineKey``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, key: EngineKey) -> Path:
        return self.root / key.network / f"{key.precision.value}-{key.digest}.engine"

    def store(self, key: EngineKey, engine_bytes: bytes) -> Path:
        """Write atomically: the final name appears only once the whole engine is on disk."""
        if not engine_bytes:
            raise ValueError(f"refusing to cache an empty engine for {key.network}")
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(path.with_suffix(".json"), json.dumps(key.as_dict(), indent=2).encode())
        write_bytes_atomically(path, engine_bytes)
        return path

    def load(self, key: EngineKey, deserialize: Callable[[bytes], Any]) -> Any | None:
        """The deserialised engine, or None when it is missing or does not deserialise (then it is moved aside)."""
        path = self.path_for(key)
        if not path.is_file():
            return None
        engine = _try_deserialize(deserialize, path.read_bytes())
        if engine is None:
            bad = path.with_suffix(".engine.bad")
            os.replace(path, bad)
            logger.warning("engine %s for %s does not deserialise; moved to %s", path.name, key.network, bad.name)
        return engine

    def ensure(self, key: EngineKey, build: Callable[[], bytes], deserialize: Callable[[bytes], Any]) -> tuple[Any, bool]:
        """The cached engine when it deserialises, else build, store and check it. Returns (engine, built)."""
        engine = self.load(key, deserialize)
        if engine is not None:
            return engine, False
        logger.info("building engine for %s (%s, %s)", key.network, key.precision.value, key.digest)
        engine_bytes = build()
        engine = _try_deserialize(deserialize, engine_bytes)
        if engine is None:
            raise RuntimeError(f"the engine just built for {key.network} does not deserialise; check the TensorRT log")
        self.store(key, engine_bytes)
        return engine, True

    def entries(self) -> list[dict[str, Any]]:
        """What is cached: the sidecar of each engine present, with its path."""
        found = []
        for sidecar in sorted(self.root.glob("*/*.json")):
            engine_path = sidecar.with_suffix(".engine")
            if engine_path.is_file():
                entry = json.loads(sidecar.read_text())
                entry["path"] = str(engine_path)
                found.append(entry)
        return found


def _try_deserialize(deserialize: Callable[[bytes], Any], engine_bytes: bytes) -> Any | None:
    try:
        return deserialize(engine_bytes)
    except (RuntimeError, ValueError, TypeError, OSError) as exc:
        logger.warning("engine deserialisation failed: %s", exc)
        return None


