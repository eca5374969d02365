"""Small Python programs run under the recorder, and the watched tree read back, for the simulator's own tests.

``run_program(simulator, code)`` runs ``code`` in a fresh interpreter whose working directory is the watched root,
after :data:`PRELUDE` (``libc`` through ctypes, ``create``, ``fsync_dir``, ``iovecs``). ``read_tree(root)`` maps each
relative path to its bytes (None for a directory).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.powerloss.simulator import PowerLossSimulator

__all__ = ["PRELUDE", "run_program", "read_tree", "write_tree_at"]

PRELUDE = '''
import ctypes, mmap, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, AT_EMPTY_PATH, AT_SYMLINK_FOLLOW = -100, 0x1000, 0x400

def check(result):
    if result == -1 or (isinstance(result, int) and result < 0):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result

def create(name, flags=0, dir_fd=None):
    return os.open(name, os.O_WRONLY | os.O_CREAT | flags, 0o644, dir_fd=dir_fd)

def fsync_dir(path="."):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)

class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_char_p), ("length", ctypes.c_size_t)]

def iovecs(*parts):
    return (iovec * len(parts))(*(iovec(part, len(part)) for part in parts)), len(parts)

for name in ("pwrite", "pwrite64"):
    getattr(libc, name).argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int64]
for name in ("pwritev", "pwritev64"):
    getattr(libc, name).argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64]
for name in ("pwritev2", "pwritev64v2"):
    getattr(libc, name).argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int]
for name in ("ftruncate", "ftruncate64"):
    getattr(libc, name).argtypes = [ctypes.c_int, ctypes.c_int64]
for name in ("truncate", "truncate64"):
    getattr(libc, name).argtypes = [ctypes.c_char_p, ctypes.c_int64]
for name in ("fallocate", "fallocate64"):
    getattr(libc, name).argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
for name in ("posix_fallocate", "posix_fallocate64"):
    getattr(libc, name).argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
libc.sendfile.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
for name in ("mmap", "mmap64"):
    getattr(libc, name).restype = ctypes.c_void_p
    getattr(libc, name).argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                    ctypes.c_int64]
libc.fopen.restype = libc.fopen64.restype = libc.freopen.restype = libc.freopen64.restype = ctypes.c_void_p
libc.freopen.argtypes = libc.freopen64.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
'''


def run_program(simulator: PowerLossSimulator, code: str, *, timeout: float = 60,
                slow_directory_sync_ms: int = 0) -> subprocess.CompletedProcess:
    """Run ``code`` (after :data:`PRELUDE`) under the recorder, in the watched root; raise if it fails."""
    env = simulator.env(slow_directory_sync_ms=slow_directory_sync_ms)
    completed = subprocess.run([sys.executable, "-c", PRELUDE + code], cwd=simulator.root, env=env,
                               capture_output=True, text=True, timeout=timeout)
    if completed.returncode not in (0, -9):  # -9: the program killed itself, as a power cut would
        raise AssertionError(f"the program failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    return completed


def read_tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (relative, with ``/``) -> its bytes, or None for a directory."""
    root = Path(root)
    return {str(path.relative_to(root)): None if path.is_dir() else path.read_bytes()
            for path in sorted(root.rglob("*"))}


def write_tree_at(root: Path, tree: dict[str, bytes | None]) -> None:
    """Create ``tree`` (as :func:`read_tree` returns it) under ``root``."""
    root = Path(root)
    for path, content in sorted(tree.items()):
        target = root / path
        if content is None:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
