"""Writing the files engines make (ONNX exports, TensorRT engines and their keys) so that a reader never sees a part.

``engines`` may not import ``dicom_node`` (``../shared/DESIGN.md``, package boundaries), so it keeps this one writer of
its own; it follows the same rule as ``dicom_node.private_files.write_atomically``: a private temporary file beside the
target, fsynced, renamed over it, then the folder fsynced."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_bytes_atomically"]


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace ``path`` with ``data`` in one rename, durable once this returns; on error ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return path
