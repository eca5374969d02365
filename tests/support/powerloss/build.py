"""Compile the recorder (``recorder.c``, ``data.c``, ``names.c``, ``syncs.c`` and ``recorder.h`` beside this file) with
the machine's C compiler into a folder the caller owns.

The library is built per test session into a temporary folder and never committed. ``unrecorded`` names interposed
libc functions to leave out: the sources are compiled once into one relocatable object, and each such *mutant* only
hides those symbols (``objcopy --localize-symbol``) before linking, so calls to them reach libc unrecorded. The
simulator's own tests build one mutant per function to show that they fail when any interposition is missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

__all__ = ["SHIM_SOURCES", "ShimBuildError", "build_shim", "interposed_functions"]

_HERE = Path(__file__).parent
SHIM_SOURCES = tuple(_HERE / name for name in ("recorder.c", "data.c", "names.c", "syncs.c"))
_HEADER = _HERE / "recorder.h"
_FLAGS = ("-fPIC", "-O2", "-Wall", "-Wextra", "-Werror")


class ShimBuildError(RuntimeError):
    """The recorder could not be built: install gcc and binutils (Debian: ``apt-get install gcc libc6-dev``)."""


def _tool(name: str, *fallbacks: str) -> str:
    for candidate in (name, *fallbacks):
        if candidate and (found := shutil.which(candidate)):
            return found
    raise ShimBuildError(f"{name} is not installed: it builds the power-loss recorder (apt-get install gcc)")


def _run(command: list[str]) -> None:
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if completed.returncode != 0:
        raise ShimBuildError(f"{' '.join(command[:2])} failed building the recorder:\n{completed.stderr[-4000:]}")


def _publish(partial: Path, final: Path) -> Path:
    partial.replace(final)  # atomic: a concurrent build of the same key writes the same bytes
    return final


def _object(directory: Path, cc: str) -> Path:
    """The sources compiled and combined into one relocatable object (``ld -r``), cached by their hash."""
    digest = hashlib.sha256(repr((cc, _FLAGS)).encode())
    for path in (*SHIM_SOURCES, _HEADER):
        digest.update(path.read_bytes())
    obj = directory / f"powerloss-{digest.hexdigest()[:16]}.o"
    if obj.exists():
        return obj
    parts = []
    try:
        for source in SHIM_SOURCES:
            parts.append(directory / f".{obj.stem}-{source.stem}.{os.getpid()}.o")
            _run([cc, "-c", *_FLAGS, "-o", str(parts[-1]), str(source)])
        partial = directory / f".{obj.name}.{os.getpid()}"
        _run([_tool("ld"), "-r", "-o", str(partial), *map(str, parts)])
    finally:
        for part in parts:
            part.unlink(missing_ok=True)
    return _publish(partial, obj)


def interposed_functions(directory: Path) -> list[str]:
    """The libc functions the recorder interposes: what the library exports."""
    library = build_shim(directory)
    listing = subprocess.run([_tool("nm"), "-D", "--defined-only", str(library)], capture_output=True, text=True,
                             check=True).stdout
    return sorted(line.split()[-1] for line in listing.splitlines() if line.split()[1:2] == ["T"])


def build_shim(directory: Path, *, unrecorded: Iterable[str] = ()) -> Path:
    """The path of the recorder library in ``directory``, built unless an identical one is already there."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(set(unrecorded))
    for name in names:
        if not name.isidentifier():
            raise ValueError(f"unrecorded: {name!r} is not a C function name")
    cc = _tool(os.environ.get("CC", "gcc"), "cc")
    obj = _object(directory, cc)
    suffix = "-without-" + "-".join(names) if names else ""
    library = directory / f"{obj.stem}{suffix}.so"
    if library.exists():
        return library
    linked = obj
    if names:
        linked = directory / f".{library.stem}.{os.getpid()}.o"
        _run([_tool("objcopy"), *(f"--localize-symbol={name}" for name in names), str(obj), str(linked)])
    partial = directory / f".{library.name}.{os.getpid()}"
    try:
        _run([cc, "-shared", "-o", str(partial), str(linked), "-ldl", "-pthread"])
    finally:
        if linked != obj:
            linked.unlink(missing_ok=True)
    return _publish(partial, library)
