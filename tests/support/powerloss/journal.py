"""The recorder's logs read back: one typed :class:`Record` per change, sync or intent, in the order they happened.

Each process writes ``<pid>-<ns>.log`` in the log folder; a record is an 80-byte little-endian header (see
``record_header`` in ``recorder.h``), its two paths and its data. Records are merged across processes by their sequence
number, taken from a counter every process maps shared (a change takes its number once done, a sync before it
starts). SIGKILL can cut a process's last record short: such a record is dropped and counted (``torn``), and the
intent before it tells the reader that a change may have been in flight.
"""

from __future__ import annotations

import enum
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RecordType", "SyncKind", "Record", "DataRef", "Journal", "read_journal", "JournalError", "forget_logs"]

_HEADER = struct.Struct("<IHHQQQQQqqIIQ")
_MAGIC = 0x31524C50
DSYNC_FLAG = 1  # a write made durable by O_SYNC / O_DSYNC / RWF_DSYNC
OK_FLAG = 1  # a sync that returned success


class JournalError(RuntimeError):
    """A log the recorder wrote cannot be read (not a cut-short last record: damage in the middle)."""


class RecordType(enum.IntEnum):
    OPEN = 1
    WRITE = 2
    TRUNCATE = 3
    FALLOCATE = 4
    LINK = 5
    RENAME = 6
    UNLINK = 7
    RMDIR = 8
    MKDIR = 9
    SYNC = 10
    SYNC_ALL = 11
    MMAP_WRITE = 12
    UNSUPPORTED = 13
    INTENT = 14
    ABANDONED = 15


class SyncKind(enum.IntEnum):
    FSYNC = 1
    FDATASYNC = 2
    SYNC_FILE_RANGE = 3  # never a barrier: no metadata, no disk cache flush
    SYNCFS = 4
    SYNC = 5


_MAPPED: dict[Path, mmap.mmap] = {}  # logs read so far, mapped once


def _mapped(log: Path) -> mmap.mmap:
    if log not in _MAPPED:
        with log.open("rb") as handle:
            _MAPPED[log] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    return _MAPPED[log]


def forget_logs() -> None:
    """Unmap every log read so far (before the logs are removed or rewritten)."""
    while _MAPPED:
        _MAPPED.popitem()[1].close()


@dataclass(frozen=True)
class DataRef:
    """Bytes a write carried, left in its log (mapped on first use) until needed."""

    log: Path
    offset: int
    length: int

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        end = self.length if end is None else end
        return _mapped(self.log)[self.offset + start:self.offset + end]


@dataclass(frozen=True)
class Record:
    type: RecordType
    flags: int
    seq: int
    intent: int  # the INTENT record a change completes (0: none)
    dev: int
    ino: int
    ino2: int
    a: int
    b: int
    path1: str
    path2: str
    data: DataRef | None

    @property
    def ok(self) -> bool:
        return bool(self.flags & OK_FLAG)

    @property
    def synchronous(self) -> bool:
        return bool(self.flags & DSYNC_FLAG)


@dataclass(frozen=True)
class Journal:
    records: tuple[Record, ...]  # changes and syncs, by sequence number (intents and abandonments left out)
    in_flight: tuple[Record, ...]  # intents with neither a change nor an abandonment: perhaps done, perhaps not
    torn: int  # records cut short at the end of a log
    broken: tuple[str, ...]  # what the recorder said when it could not write its log


def _read_log(path: Path) -> tuple[list[Record], int]:
    raw = path.read_bytes()
    records: list[Record] = []
    at = 0
    while at < len(raw):
        if len(raw) - at < _HEADER.size:
            return records, 1
        (magic, kind, flags, seq, intent, dev, ino, ino2, a, b, len1, len2, data_len) = _HEADER.unpack_from(raw, at)
        if magic != _MAGIC:
            raise JournalError(f"{path.name}: no record at byte {at}")
        end = at + _HEADER.size + len1 + len2 + data_len
        if end > len(raw):
            return records, 1
        p1 = at + _HEADER.size
        p2 = p1 + len1
        data = DataRef(path, p2 + len2, data_len) if data_len else None
        records.append(Record(RecordType(kind), flags, seq, intent, dev, ino, ino2, a, b,
                              os.fsdecode(raw[p1:p2]), os.fsdecode(raw[p2:p2 + len2]), data))
        at = end
    return records, 0


def read_journal(log_dir: Path) -> Journal:
    """Every process's records, merged by sequence number."""
    forget_logs()  # a log mapped before may have grown since
    log_dir = Path(log_dir)
    records: list[Record] = []
    torn = 0
    for log in sorted(log_dir.glob("*.log")):
        found, cut_short = _read_log(log)
        records += found
        torn += cut_short
    broken = tuple(path.read_text(errors="replace") for path in sorted(log_dir.glob("*.broken")))
    records.sort(key=lambda record: record.seq)
    intents = {record.seq: record for record in records if record.type is RecordType.INTENT}
    for record in records:
        if record.intent:
            intents.pop(record.intent, None)
    changes = tuple(r for r in records if r.type not in (RecordType.INTENT, RecordType.ABANDONED))
    return Journal(changes, tuple(intents.values()), torn, broken)
