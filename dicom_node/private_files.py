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
from pathlib import Path

__all__ = [
    "FILE_MODE",
    "SECRET_FILE_MODE",
    "DIR_MODE",
    "PRIVATE_UMASK",
    "make_private_dirs",
    "create_private_file",
    "restrict_umask",
    "looser_than_private",
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
