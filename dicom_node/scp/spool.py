"""The spool: received instances as files, ``spool/<study>/<series>/<sop>.dcm``, written so a crash never leaves half a file.

Each instance goes to a temporary file in ``spool/.incoming`` (same file system), is fsynced, then linked under its
final name (``link`` fails instead of overwriting) and the directory is fsynced. A leftover temporary file is never
visible as an instance and is removed by :meth:`SpoolWriter.prepare` at start-up.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dicom_node.uids import validate_uid

__all__ = ["SpoolWriter", "SpooledFile", "StoreOutcome", "InstanceLocation", "SpoolError", "SpoolFull"]

LOGGER = logging.getLogger(__name__)

INCOMING_DIR = ".incoming"
_TEMP_SUFFIX = ".part"
_READ_CHUNK = 1 << 20
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def _new_digest():
    """SHA-256: as strong as blake2b-256 and twice as fast where the CPU has SHA instructions (x86 SHA-NI, ARMv8
    crypto extensions), which matters because every received byte is digested on the C-STORE hot path."""
    return hashlib.sha256()


class SpoolError(OSError):
    """The spool could not store an instance (an I/O error other than a full disk)."""


class SpoolFull(SpoolError):
    """The spool's file system is full (ENOSPC/EDQUOT): the sender should retry later (Out of Resources)."""


class StoreOutcome(str, enum.Enum):
    STORED = "stored"  # a new instance
    DUPLICATE = "duplicate"  # the same bytes are already in the spool under this name
    CONFLICT = "conflict"  # the SOP Instance UID was already stored with other bytes: kept beside it


@dataclass(frozen=True)
class InstanceLocation:
    """Where an instance belongs; every part is a validated UID (digits and dots), so it cannot leave the spool."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str

    def __post_init__(self) -> None:
        validate_uid(self.study_uid, "StudyInstanceUID")
        validate_uid(self.series_uid, "SeriesInstanceUID")
        validate_uid(self.sop_instance_uid, "SOPInstanceUID")

    @property
    def series_dir(self) -> str:
        return f"{self.study_uid}/{self.series_uid}"

    @property
    def primary_name(self) -> str:
        return f"{self.sop_instance_uid}.dcm"

    def conflict_name(self, digest: str) -> str:
        # "conflict-" holds letters, which no UID has: this name can never be another instance's primary name.
        return f"{self.sop_instance_uid}.conflict-{digest[:16]}.dcm"


@dataclass(frozen=True)
class SpooledFile:
    """One stored file: its path relative to the spool root, size, SHA-256 digest (hex), and what happened."""

    relative_path: str
    size_bytes: int
    digest: str
    outcome: StoreOutcome
    conflict: bool  # the file is a second copy whose content differs from the instance's first copy


def _digest_of(path: Path) -> str:
    digest = _new_digest()
    with path.open("rb") as handle:
        while block := handle.read(_READ_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ignore(_spooled: SpooledFile) -> None:
    return None


class _DirectorySync:
    """fsync of directories shared by concurrent writers: one fsync covers every link made before it started.

    Under load many C-STOREs land in the same series directory at once; they wait for one directory fsync together
    (a group commit) instead of queueing one fsync each.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._requested: dict[Path, int] = {}
        self._done: dict[Path, int] = {}
        self._running: set[Path] = set()
        self._waiting: dict[Path, int] = {}

    def sync(self, directory: Path) -> None:
        with self._condition:
            ticket = self._requested.get(directory, 0) + 1
            self._requested[directory] = ticket
            self._waiting[directory] = self._waiting.get(directory, 0) + 1
            try:
                while self._done.get(directory, 0) < ticket:
                    if directory in self._running:
                        self._condition.wait()
                        continue
                    self._running.add(directory)
                    covered = self._requested[directory]
                    self._condition.release()
                    try:
                        _fsync_dir(directory)
                    finally:
                        self._condition.acquire()
                        self._running.discard(directory)
                        self._condition.notify_all()
                    self._done[directory] = max(self._done.get(directory, 0), covered)
            finally:
                self._waiting[directory] -= 1
                if not self._waiting[directory]:  # nobody holds a ticket: forget the directory (tickets restart)
                    del self._waiting[directory], self._requested[directory]
                    self._done.pop(directory, None)


class SpoolWriter:
    """Writes instances into ``root`` durably; safe to use from many threads and processes at once."""

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable
        self._incoming = self.root / INCOMING_DIR
        self._known_dirs: set[str] = set()
        self._dir_lock = threading.Lock()
        self._dir_sync = _DirectorySync()

    # -- start-up -------------------------------------------------------------------------------------------------

    def prepare(self) -> int:
        """Create the spool and remove temporary files a crash left behind; return how many were removed."""
        self._incoming.mkdir(parents=True, exist_ok=True)
        removed = 0
        for leftover in self._incoming.glob(f"*{_TEMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)
            removed += 1
        if removed:
            LOGGER.warning("removed %d partially received file(s) left by an interrupted run", removed)
        return removed

    def path_of(self, relative_path: str) -> Path:
        return self.root / relative_path

    # -- writing --------------------------------------------------------------------------------------------------

    def write(
        self,
        location: InstanceLocation,
        chunks: Sequence[bytes],
        *,
        on_linked: Callable[[SpooledFile], None] | None = None,
    ) -> SpooledFile:
        """Store the concatenation of ``chunks`` for ``location``; never overwrite another file.

        ``on_linked`` is called once the file's data is durable and its final name is decided and linked (or found
        to hold these bytes already), before the directory fsync that makes the name durable: the node starts the
        database commit there, so the two syncs overlap. ``write`` returns only after that directory fsync.
        Raises ``SpoolFull`` when the disk is full and ``SpoolError`` for other I/O failures; nothing is left behind.
        """
        temp = self._incoming / f"{os.getpid()}-{uuid.uuid4().hex}{_TEMP_SUFFIX}"
        try:
            size, digest = self._write_temp(temp, chunks)
            return self._publish(location, temp, size, digest, on_linked or _ignore)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise SpoolFull(exc.errno, f"the spool's disk is full ({self.root})") from exc
            if isinstance(exc, SpoolError):
                raise
            raise SpoolError(exc.errno, f"cannot write to the spool ({self.root}): {exc.strerror}") from exc
        finally:
            temp.unlink(missing_ok=True)

    def _open_temp(self, temp: Path) -> int:
        return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o640)

    def _write_temp(self, temp: Path, chunks: Sequence[bytes]) -> tuple[int, str]:
        digest = _new_digest()
        size = 0
        fd = self._open_temp(temp)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                digest.update(view)
                size += len(view)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            if self.durable:
                os.fdatasync(fd)  # data and the size of a new file; its name is made durable by the directory fsync
        finally:
            os.close(fd)
        return size, digest.hexdigest()

    def _publish(
        self, location: InstanceLocation, temp: Path, size: int, digest: str, on_linked: Callable[[SpooledFile], None]
    ) -> SpooledFile:
        series_dir = self._ensure_dir(location)
        primary = f"{location.series_dir}/{location.primary_name}"
        if self._link(temp, self.root / primary):
            return self._announce(SpooledFile(primary, size, digest, StoreOutcome.STORED, conflict=False), series_dir,
                                  on_linked)
        if _digest_of(self.root / primary) == digest:
            # Already there; the directory is synced anyway, in case the first copy's name is not durable yet.
            return self._announce(SpooledFile(primary, size, digest, StoreOutcome.DUPLICATE, conflict=False),
                                  series_dir, on_linked)
        copy = f"{location.series_dir}/{location.conflict_name(digest)}"
        if self._link(temp, self.root / copy):
            return self._announce(SpooledFile(copy, size, digest, StoreOutcome.CONFLICT, conflict=True), series_dir,
                                  on_linked)
        # The digest is in the name: this very content was already kept as a conflicting copy.
        return self._announce(SpooledFile(copy, size, digest, StoreOutcome.DUPLICATE, conflict=True), series_dir,
                              on_linked)

    def _announce(
        self, spooled: SpooledFile, series_dir: Path, on_linked: Callable[[SpooledFile], None]
    ) -> SpooledFile:
        on_linked(spooled)
        self._sync(series_dir)
        return spooled

    @staticmethod
    def _link(source: Path, target: Path) -> bool:
        try:
            os.link(source, target)
        except FileExistsError:
            return False
        return True

    def _sync(self, directory: Path) -> None:
        if self.durable:
            self._dir_sync.sync(directory)

    def _ensure_dir(self, location: InstanceLocation) -> Path:
        series_dir = self.root / location.series_dir
        if location.series_dir in self._known_dirs and series_dir.is_dir():
            return series_dir
        with self._dir_lock:
            study_dir = series_dir.parent
            created_study = not study_dir.is_dir()
            study_dir.mkdir(exist_ok=True)
            created_series = not series_dir.is_dir()
            series_dir.mkdir(exist_ok=True)
            if created_study:
                self._sync(self.root)
            if created_series:
                self._sync(study_dir)
            self._known_dirs.add(location.series_dir)
        return series_dir
