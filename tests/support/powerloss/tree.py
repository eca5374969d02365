"""Trees built from a history and a selection of its ops: what the names are, what each file holds; checked against
the real tree (the live history must explain it), and written out in place of it (the cut).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tests.support.powerloss.durability import Selection
from tests.support.powerloss.history import ROOT, DataKind, DataOp, History, InodeKind, RecordingMismatch

__all__ = ["ModelTree", "build_tree", "check_live_tree", "write_tree", "LiveFile"]

_FALLOC_KEEP_SIZE = 0x01
_FALLOC_PUNCH_HOLE = 0x02
_FALLOC_ZERO_RANGE = 0x10
_MISMATCHES_SHOWN = 12


@dataclass(frozen=True)
class LiveFile:
    """A name in the real tree when the cut began."""

    ino: int
    mode: int
    is_dir: bool
    size: int


class ModelTree:
    """The names reachable from the root (relative path -> inode id) and the data ops each file inode keeps."""

    def __init__(self, history: History, paths: dict[str, int], ops: dict[int, list[tuple[DataOp, tuple | None]]],
                 anomalies: list[str]) -> None:
        self.history = history
        self.paths = paths
        self.ops = ops
        self.anomalies = anomalies

    def is_dir(self, path: str) -> bool:
        return self.history.inodes[self.paths[path]].kind is InodeKind.DIRECTORY

    def content(self, inode_id: int) -> bytes:
        """The bytes of file ``inode_id``: its baseline, then every kept data op in order."""
        inode = self.history.inodes[inode_id]
        data = bytearray(inode.baseline.read_bytes()) if inode.baseline is not None else bytearray()
        for op, ranges in self.ops.get(inode_id, ()):
            _apply(data, op, ranges)
        return bytes(data)


def _place(data: bytearray, at: int, chunk: bytes) -> None:
    if len(data) < at:
        data.extend(bytes(at - len(data)))
    data[at:at + len(chunk)] = chunk


def _apply(data: bytearray, op: DataOp, ranges: tuple[tuple[int, int], ...] | None) -> None:
    if op.kind is DataKind.WRITE:
        if op.data is None:
            return
        for start, end in ranges or ((0, op.length),):
            _place(data, op.offset + start, op.data.read(start, end))
    elif op.kind is DataKind.TRUNCATE:
        if op.offset < len(data):
            del data[op.offset:]
        else:
            data.extend(bytes(op.offset - len(data)))
    elif op.mode & (_FALLOC_PUNCH_HOLE | _FALLOC_ZERO_RANGE):
        end = op.offset + op.length
        if not op.mode & _FALLOC_KEEP_SIZE and len(data) < end:
            data.extend(bytes(end - len(data)))
        stop = min(end, len(data))
        if op.offset < stop:
            data[op.offset:stop] = bytes(stop - op.offset)
    elif op.mode & ~_FALLOC_KEEP_SIZE:
        raise NotImplementedError(f"fallocate mode {op.mode:#x} (collapse or insert range) is not modelled")
    elif not op.mode & _FALLOC_KEEP_SIZE and len(data) < op.offset + op.length:
        data.extend(bytes(op.offset + op.length - len(data)))


def build_tree(history: History, selection: Selection) -> ModelTree:
    """Apply the selected name ops to the baseline's entries, in order; walk what the root reaches."""
    entries = {directory: dict(names) for directory, names in history.baseline.entries.items()}
    for inode in history.inodes.values():
        if inode.kind is InodeKind.DIRECTORY:
            entries.setdefault(inode.id, {})
    for index in sorted(selection.name_ops):
        for change in history.name_ops[index].changes:
            names = entries[change.directory]
            if change.after is not None:
                names[change.name] = change.after
            elif names.get(change.name) == change.before:  # a removal applies to the inode it removed
                del names[change.name]
    paths: dict[str, int] = {}
    anomalies: list[str] = []
    seen_dirs = {ROOT}
    pending = [("", ROOT)]
    while pending:
        prefix, directory = pending.pop()
        for name, inode_id in sorted(entries[directory].items()):
            path = f"{prefix}{name}"
            if history.inodes[inode_id].kind is InodeKind.DIRECTORY:
                if inode_id in seen_dirs:  # only a subset of a cross-directory rename's history can do this
                    anomalies.append(f"{path}: a second name for a directory, left out")
                    continue
                seen_dirs.add(inode_id)
                pending.append((f"{path}/", inode_id))
            paths[path] = inode_id
    ops: dict[int, list[tuple[DataOp, tuple | None]]] = defaultdict(list)
    for index in sorted(selection.data_ops):
        op = history.data_ops[index]
        ops[op.inode].append((op, selection.data_ops[index]))
    return ModelTree(history, paths, dict(ops), anomalies)


def _scan(root: Path) -> dict[str, LiveFile]:
    found: dict[str, LiveFile] = {}
    pending = [(root, "")]
    while pending:
        directory, prefix = pending.pop()
        with os.scandir(directory) as listing:
            for entry in listing:
                info = entry.stat(follow_symlinks=False)
                path = f"{prefix}{entry.name}"
                is_dir = stat.S_ISDIR(info.st_mode)
                found[path] = LiveFile(info.st_ino, stat.S_IMODE(info.st_mode), is_dir, info.st_size)
                if is_dir:
                    pending.append((Path(entry.path), f"{path}/"))
    return found


def _touched_in_flight(path: str, in_flight: set[str]) -> bool:
    return any(path == other or path.startswith(other + "/") or other.startswith(path + "/") for other in in_flight)


def _digest_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_live_tree(history: History, live_tree: ModelTree, root: Path) -> dict[str, LiveFile]:
    """The real tree under ``root``, after checking that the live history explains every name, inode, size and byte
    in it (except where a change was in flight at the kill, and bytes written through shared mappings)."""
    real = _scan(root)
    problems: list[str] = []
    in_flight = history.in_flight_paths
    for path in sorted(set(real) | set(live_tree.paths)):
        if _touched_in_flight(path, in_flight):
            continue
        found, inode_id = real.get(path), live_tree.paths.get(path)
        if found is None:
            problems.append(f"{path}: in the recording, not on disk")
            continue
        if inode_id is None:
            problems.append(f"{path}: on disk, not in the recording")
            continue
        inode = history.inodes[inode_id]
        if found.is_dir != (inode.kind is InodeKind.DIRECTORY) or found.ino != inode.ino:
            problems.append(f"{path}: on disk inode {found.ino}, recorded inode {inode.ino}")
            continue
        if found.is_dir or inode_id in history.in_flight_inodes:
            continue
        expected = live_tree.content(inode_id)
        if found.size != len(expected):
            problems.append(f"{path}: {found.size} bytes on disk, {len(expected)} recorded")
        elif not inode.mapped_for_writing and _digest_file(root / path) != hashlib.sha256(expected).hexdigest():
            problems.append(f"{path}: its bytes differ from the recorded writes")
    if problems:
        more = f" (and {len(problems) - _MISMATCHES_SHOWN} more)" if len(problems) > _MISMATCHES_SHOWN else ""
        raise RecordingMismatch("the recording does not explain the watched tree: "
                                + "; ".join(problems[:_MISMATCHES_SHOWN]) + more)
    return real


def _clear(root: Path) -> None:
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def write_tree(tree: ModelTree, root: Path, live: dict[str, LiveFile]) -> None:
    """Replace everything under ``root`` with ``tree`` (modes as they were where the inode was still live)."""
    modes = {found.ino: found.mode for found in live.values()}
    _clear(root)
    written: dict[int, Path] = {}
    for path in sorted(tree.paths, key=lambda p: p.count("/")):
        inode_id = tree.paths[path]
        inode = tree.history.inodes[inode_id]
        target = root / path
        if inode.kind is InodeKind.DIRECTORY:
            target.mkdir()
            target.chmod(modes.get(inode.ino, 0o755))
        elif inode_id in written:
            os.link(written[inode_id], target)
        else:
            target.write_bytes(tree.content(inode_id))
            target.chmod(modes.get(inode.ino, 0o644))
            written[inode_id] = target
