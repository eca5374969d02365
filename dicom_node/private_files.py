"""Files and folders that hold patient data or secrets: readable by the service's user and group at most, whatever
the umask of the process that makes them.

Everything under HOME is such a file: the spool (received DICOM), results and work arrays, the SQLite database and
the embedded broker (users' scrypt hashes, the audit log), ``session.key``, destinations and routing rules. Files are
created ``0640`` (secrets ``0600``), folders ``0750``; a mode passed to ``open``/``mkdir`` is only ever narrowed by the
umask, so these are upper bounds that hold under any umask. :func:`restrict_umask` covers what other libraries create
for us (SQLite's journal and WAL files, the broker's tables) in every process the command line starts.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = [
    "FILE_MODE",
    "SECRET_FILE_MODE",
    "DIR_MODE",
    "PRIVATE_UMASK",
    "make_private_dirs",
    "create_private_file",
    "restrict_umask",
    "looser_than_private",
    "write_atomically",
    "write_bytes_atomically",
]

FILE_MODE = 0o640
SECRET_FILE_MODE = 0o600
DIR_MODE = 0o750
PRIVATE_UMASK = 0o027  # no write for the group, nothing for others


def make_private_dirs(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p`` where every folder it creates is ``0750`` at most (``Path.mkdir(parents=True)`` gives the
    parents the umask's default instead). Existing folders are left as they are."""
    path = Path(path)
    missing = []
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:
            if not folder.is_dir():
                raise
    return path


def create_private_file(path: str | os.PathLike[str], mode: int = FILE_MODE) -> bool:
    """Create an empty file with ``mode`` (at most) if there is none yet, so that the library that fills it (SQLite)
    keeps that mode; returns whether it created it."""
    make_private_dirs(Path(path).parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def restrict_umask() -> int:
    """Add ``PRIVATE_UMASK`` to this process's umask (children inherit it); returns the umask it replaced."""
    current = os.umask(PRIVATE_UMASK)
    os.umask(current | PRIVATE_UMASK)
    return current


def looser_than_private(path: str | os.PathLike[str]) -> int | None:
    """The permission bits of ``path`` when they grant more than ``0640`` (a file) or ``0750`` (a folder), else None.
    A symbolic link is judged by what it points to."""
    mode = os.stat(path).st_mode
    bits = stat.S_IMODE(mode)
    allowed = DIR_MODE if stat.S_ISDIR(mode) else FILE_MODE
    return bits if bits & ~allowed else None


@contextmanager
def write_atomically(path: str | os.PathLike[str], *, text: bool = False, durable: bool = True) -> Iterator[IO]:
    """Yield a file open on a temporary file beside ``path`` (``0600``, in folders made ``0750``); when the block ends
    without error it replaces ``path`` in one rename, so a reader sees the old content or the new, never a part. With
    ``durable`` (the default) the file is fsynced before the rename and its folder after it, so the new content
    survives a power cut once this returns. On error the temporary file is removed and ``path`` is left as it was.

    The one atomic write of the code base: results, work arrays, reviewed objects, destinations, routing rules,
    TensorRT engines, ONNX exports and the node's status file (``durable=False``: rewritten every heartbeat)."""
    path = Path(path)
    make_private_dirs(path.parent)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w" if text else "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if durable:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> Path:
    """:func:`write_atomically` for content already in memory; returns ``path``."""
    with write_atomically(path, durable=durable) as handle:
        handle.write(data)
    return Path(path)
