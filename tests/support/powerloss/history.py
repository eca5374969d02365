"""The watched tree's history as the model sees it: inodes, directory entries, and every recorded change resolved to
them.

A :class:`Baseline` is the tree when the simulator was armed (taken as durable, as after ``sync``), copied aside.
:func:`replay` walks the journal against it, exactly as the kernel applied the changes (the "live" history), and
resolves each record to what it did at the inode level: a :class:`NameOp` is one or two directory-entry changes (a
name bound to an inode or removed), a :class:`DataOp` changes one inode's bytes or size, a :class:`Sync` is a barrier
that succeeded. The durability models (``durability.py``) then choose which of these ops a power cut keeps, and
``tree.py`` builds the result. A record the live history cannot explain (a write to an inode it never saw, a name it
does not know) raises :class:`RecordingMismatch`: something changed the tree without being recorded.
"""

from __future__ import annotations

import enum
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.powerloss.journal import DataRef, Journal, Record, RecordType, SyncKind

__all__ = [
    "ROOT", "InodeKind", "Inode", "Baseline", "EntryChange", "NameOp", "DataKind", "DataOp", "Sync", "History",
    "RecordingMismatch", "UnsupportedOperation", "take_baseline", "replay",
]

ROOT = 0  # the watched root's inode id
_RENAME_EXCHANGE = 2
_RENAME_WHITEOUT = 4


class RecordingMismatch(RuntimeError):
    """The journal does not explain the watched tree: a change was not recorded (a process that ran without the
    recorder, a libc call the recorder does not interpose, or a process still running during the cut)."""


class UnsupportedOperation(RuntimeError):
    """The watched tree was changed in a way the model does not cover (symbolic links, stdio writes, files moved in
    from outside the root): the cut refuses rather than produce a state no disk could hold."""

    def __init__(self, message: str, operations: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.operations = operations  # "what: absolute path", one per unsupported change recorded


class InodeKind(str, enum.Enum):
    FILE = "file"
    DIRECTORY = "directory"


@dataclass
class Inode:
    id: int
    kind: InodeKind
    ino: int  # the kernel's inode number while the history ran
    baseline: Path | None = None  # a copy of its content when armed (files only)
    mapped_for_writing: bool = False  # mmap(MAP_SHARED, PROT_WRITE): writes through the mapping are not in the model


@dataclass(frozen=True)
class Baseline:
    entries: dict[int, dict[str, int]]  # directory id -> name -> inode id
    inodes: dict[int, Inode]


def take_baseline(root: Path, copies: Path) -> Baseline:
    """The tree under ``root`` as it is now, its files copied into ``copies`` (an empty folder)."""
    root_stat = os.lstat(root)
    inodes = {ROOT: Inode(ROOT, InodeKind.DIRECTORY, root_stat.st_ino)}
    entries: dict[int, dict[str, int]] = {ROOT: {}}
    by_ino: dict[int, int] = {root_stat.st_ino: ROOT}
    pending = [(root, ROOT)]
    while pending:
        directory, directory_id = pending.pop()
        with os.scandir(directory) as listing:
            for entry in listing:
                info = entry.stat(follow_symlinks=False)
                if info.st_ino in by_ino:
                    if stat.S_ISDIR(info.st_mode):
                        raise UnsupportedOperation(f"{entry.path}: a directory seen twice")
                    entries[directory_id][entry.name] = by_ino[info.st_ino]  # a hard link
                    continue
                new = len(inodes)
                if stat.S_ISDIR(info.st_mode):
                    inodes[new] = Inode(new, InodeKind.DIRECTORY, info.st_ino)
                    entries[new] = {}
                    pending.append((Path(entry.path), new))
                elif stat.S_ISREG(info.st_mode):
                    copy = copies / str(new)
                    shutil.copyfile(entry.path, copy)
                    inodes[new] = Inode(new, InodeKind.FILE, info.st_ino, baseline=copy)
                else:
                    raise UnsupportedOperation(f"{entry.path}: only files and directories are modelled")
                by_ino[info.st_ino] = new
                entries[directory_id][entry.name] = new
    return Baseline(entries, inodes)


@dataclass(frozen=True)
class EntryChange:
    """One directory entry: ``name`` in ``directory`` goes from ``before`` to ``after`` (None: no such name)."""

    directory: int
    name: str
    before: int | None
    after: int | None


@dataclass(frozen=True)
class NameOp:
    seq: int
    description: str
    changes: tuple[EntryChange, ...]
    directories: frozenset[int]  # an fsync of any of them makes the whole op durable (journaling file systems
    # commit a rename atomically)


class DataKind(str, enum.Enum):
    WRITE = "write"
    TRUNCATE = "truncate"
    FALLOCATE = "fallocate"


@dataclass(frozen=True)
class DataOp:
    seq: int
    inode: int
    kind: DataKind
    offset: int  # write, fallocate: where; truncate: the new size
    length: int  # write: bytes; fallocate: length
    mode: int = 0  # fallocate's mode
    data: DataRef | None = None
    synchronous: bool = False  # O_SYNC, O_DSYNC, RWF_DSYNC: durable when it returned


@dataclass(frozen=True)
class Sync:
    seq: int  # taken before the call: it covers every change with a smaller number
    inode: int | None  # None: sync() or syncfs() of the watched file system
    kind: SyncKind
    done: int  # taken when it returned: a power cut after this number finds it done


@dataclass
class History:
    baseline: Baseline
    inodes: dict[int, Inode]
    name_ops: list[NameOp] = field(default_factory=list)
    data_ops: list[DataOp] = field(default_factory=list)
    syncs: list[Sync] = field(default_factory=list)
    not_barriers: list[Sync] = field(default_factory=list)  # sync_file_range, and syncs that failed
    live: dict[int, dict[str, int]] = field(default_factory=dict)  # entries once every change was applied
    in_flight_paths: set[str] = field(default_factory=set)  # names a change in flight at the kill may have touched
    in_flight_inodes: set[int] = field(default_factory=set)  # inodes whose bytes such a change may have touched
    unsupported: list[str] = field(default_factory=list)
    in_flight: int = 0  # changes under way when the processes died
    torn_records: int = 0  # records cut short by the kill (dropped)


class _Replay:
    """Applies records to the live entries in order, resolving each to inode ids."""

    def __init__(self, baseline: Baseline, root: Path) -> None:
        self.root = os.fspath(root)
        self.history = History(baseline, dict(baseline.inodes))
        self.entries = {directory: dict(names) for directory, names in baseline.entries.items()}
        self.by_ino = {inode.ino: inode.id for inode in baseline.inodes.values()}
        self.names = {inode_id: 0 for inode_id in baseline.inodes}
        for names in self.entries.values():
            for inode_id in names.values():
                self.names[inode_id] += 1

    # -- helpers ---------------------------------------------------------------------------------------------------

    def relative(self, path: str) -> str:
        if path == self.root:
            return ""
        if not path.startswith(self.root + "/"):
            raise RecordingMismatch(f"{path} is outside the watched root {self.root}")
        return path[len(self.root) + 1:]

    def parent_of(self, path: str) -> tuple[int, str]:
        parts = self.relative(path).split("/")
        directory = ROOT
        for part in parts[:-1]:
            child = self.entries[directory].get(part)
            if child is None or self.history.inodes[child].kind is not InodeKind.DIRECTORY:
                raise RecordingMismatch(f"{path}: the model has no directory {part!r} on the way")
            directory = child
        if not parts[-1]:
            raise RecordingMismatch(f"{path}: the watched root itself cannot be named or removed")
        return directory, parts[-1]

    def inode_of(self, record: Record, what: str) -> int:
        inode_id = self.by_ino.get(record.ino)
        if inode_id is None:
            raise RecordingMismatch(f"{what} of inode {record.ino}, which the recording never saw created")
        return inode_id

    def new_inode(self, kind: InodeKind, ino: int) -> int:
        previous = self.by_ino.get(ino)
        if previous is not None and self.names[previous] > 0:
            raise RecordingMismatch(f"inode {ino} was reused while the model still names it: an unlink or rename "
                                    "was not recorded")
        inode_id = len(self.history.inodes)
        self.history.inodes[inode_id] = Inode(inode_id, kind, ino)
        self.by_ino[ino] = inode_id
        self.names[inode_id] = 0
        if kind is InodeKind.DIRECTORY:
            self.entries[inode_id] = {}
        return inode_id

    def name_op(self, record: Record, description: str, *changes: EntryChange) -> None:
        for change in changes:
            current = self.entries[change.directory].get(change.name)
            if current is not None:
                self.names[current] -= 1
            if change.after is None:
                self.entries[change.directory].pop(change.name, None)
            else:
                self.entries[change.directory][change.name] = change.after
                self.names[change.after] += 1
        directories = frozenset(change.directory for change in changes)
        self.history.name_ops.append(NameOp(record.seq, description, changes, directories))

    def data_op(self, record: Record, kind: DataKind, offset: int, length: int, mode: int = 0) -> None:
        inode_id = self.inode_of(record, kind.value)
        self.history.data_ops.append(DataOp(record.seq, inode_id, kind, offset, length, mode, record.data,
                                            record.synchronous))

    # -- records ---------------------------------------------------------------------------------------------------

    def open(self, record: Record) -> None:
        if record.a & os.O_TMPFILE == os.O_TMPFILE:
            self.new_inode(InodeKind.FILE, record.ino)  # unnamed until linked
            return
        directory, name = self.parent_of(record.path1)
        current = self.entries[directory].get(name)
        if current is None:
            created = self.new_inode(InodeKind.FILE, record.ino)
            self.name_op(record, f"create {self.relative(record.path1)}",
                         EntryChange(directory, name, None, created))
        elif self.history.inodes[current].ino != record.ino:
            raise RecordingMismatch(f"{record.path1}: opened inode {record.ino}, the model has another there")
        elif record.a & os.O_TRUNC:
            self.data_op(record, DataKind.TRUNCATE, 0, 0)

    def link(self, record: Record) -> None:
        inode_id = self.by_ino.get(record.ino)
        if inode_id is None:
            raise UnsupportedOperation(f"{record.path2}: a link to a file from outside the watched root")
        directory, name = self.parent_of(record.path2)
        self.name_op(record, f"link {self.relative(record.path2)}", EntryChange(directory, name, None, inode_id))

    def rename(self, record: Record) -> None:
        if record.a & _RENAME_WHITEOUT:
            raise UnsupportedOperation(f"{record.path1}: RENAME_WHITEOUT")
        if not record.path1:
            raise UnsupportedOperation(f"{record.path2}: a file moved in from outside the watched root")
        directory, name = self.parent_of(record.path1)
        moving = self.entries[directory].get(name)
        if moving is None:
            raise RecordingMismatch(f"{record.path1}: renamed, but the model has no such name")
        if not record.path2:  # moved out of the watched tree: a removal as far as the tree goes
            self.name_op(record, f"move out {self.relative(record.path1)}", EntryChange(directory, name, moving, None))
            return
        target_dir, target = self.parent_of(record.path2)
        replaced = self.entries[target_dir].get(target)
        description = f"rename {self.relative(record.path1)} -> {self.relative(record.path2)}"
        if record.a & _RENAME_EXCHANGE:
            if replaced is None:
                raise RecordingMismatch(f"{record.path2}: exchanged, but the model has no such name")
            self.name_op(record, description, EntryChange(directory, name, moving, replaced),
                         EntryChange(target_dir, target, replaced, moving))
            return
        if self.history.inodes[moving].ino != record.ino:
            raise RecordingMismatch(f"{record.path2}: the renamed inode is not the one the model has")
        if replaced == moving:
            return  # a rename onto another name of the same inode does nothing
        self.name_op(record, description, EntryChange(directory, name, moving, None),
                     EntryChange(target_dir, target, replaced, moving))

    def remove(self, record: Record) -> None:
        directory, name = self.parent_of(record.path1)
        current = self.entries[directory].get(name)
        if current is None:
            raise RecordingMismatch(f"{record.path1}: removed, but the model has no such name")
        is_dir = self.history.inodes[current].kind is InodeKind.DIRECTORY
        if is_dir != (record.type is RecordType.RMDIR):
            raise RecordingMismatch(f"{record.path1}: removed as a {'directory' if not is_dir else 'file'}")
        if is_dir and self.entries[current]:
            raise RecordingMismatch(f"{record.path1}: removed, but the model still has names in it")
        self.name_op(record, f"remove {self.relative(record.path1)}", EntryChange(directory, name, current, None))

    def mkdir(self, record: Record) -> None:
        directory, name = self.parent_of(record.path1)
        created = self.new_inode(InodeKind.DIRECTORY, record.ino)
        self.name_op(record, f"mkdir {self.relative(record.path1)}", EntryChange(directory, name, None, created))

    def sync(self, record: Record) -> None:
        inode = None if record.type is RecordType.SYNC_ALL else self.inode_of(record, "a sync")
        barrier = Sync(record.seq, inode, SyncKind(record.a), record.b)
        if record.ok and barrier.kind is not SyncKind.SYNC_FILE_RANGE:
            self.history.syncs.append(barrier)
        else:
            self.history.not_barriers.append(barrier)

    def apply(self, record: Record) -> None:
        kind = record.type
        if kind is RecordType.OPEN:
            self.open(record)
        elif kind is RecordType.WRITE:
            self.data_op(record, DataKind.WRITE, record.a, record.data.length if record.data else 0)
        elif kind is RecordType.TRUNCATE:
            self.data_op(record, DataKind.TRUNCATE, record.a, 0)
        elif kind is RecordType.FALLOCATE:
            self.data_op(record, DataKind.FALLOCATE, record.a, record.b, record.ino2)
        elif kind is RecordType.LINK:
            self.link(record)
        elif kind is RecordType.RENAME:
            self.rename(record)
        elif kind in (RecordType.UNLINK, RecordType.RMDIR):
            self.remove(record)
        elif kind is RecordType.MKDIR:
            self.mkdir(record)
        elif kind in (RecordType.SYNC, RecordType.SYNC_ALL):
            self.sync(record)
        elif kind is RecordType.MMAP_WRITE:
            self.history.inodes[self.inode_of(record, "a shared writable mapping")].mapped_for_writing = True
        elif kind is RecordType.UNSUPPORTED:
            self.history.unsupported.append(f"{record.path2}: {record.path1 or f'inode {record.ino}'}")

    def note_in_flight(self, intent: Record) -> None:
        for path in (intent.path1, intent.path2):
            if path:
                self.history.in_flight_paths.add(self.relative(path))
        if intent.ino in self.by_ino:
            self.history.in_flight_inodes.add(self.by_ino[intent.ino])


def replay(baseline: Baseline, journal: Journal, root: Path) -> History:
    """The history of the tree under ``root`` from ``baseline`` through every recorded change."""
    replaying = _Replay(baseline, root)
    for record in journal.records:
        replaying.apply(record)
    for intent in journal.in_flight:
        replaying.note_in_flight(intent)
    history = replaying.history
    history.live = replaying.entries
    history.in_flight = len(journal.in_flight)
    history.torn_records = journal.torn
    return history
