"""The spool: received instances as files, ``spool/<study>/<series>/<sop>.dcm``, written so a crash never leaves half a file.

Each instance is first a :class:`PendingFile`: a file without a name in ``spool/.incoming`` (Linux ``O_TMPFILE``, see
``dicom_node.intake.anonymous_files``) that the intake fills as the data arrives (all at once for a C-STORE, part by
part as a STOW-RS request streams in). :meth:`SpoolWriter.publish` then makes it an instance: fdatasync, a link under
its final name (``linkat`` fails instead of overwriting), and an fsync of the directory. Where unnamed files are not
available, the pending file is a named temporary file in ``spool/.incoming`` (same file system), linked the same way
and then removed; a leftover temporary file is never visible as an instance and :meth:`SpoolWriter.prepare` removes it
at start-up.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import hashlib
import logging
import os
import threading
import uuid
from contextlib import contextmanager
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from dicom_node.intake.anonymous_files import AnonymousLinker, open_anonymous, probe
from dicom_node.private_files import DIR_MODE, FILE_MODE, make_private_dirs
from dicom_node.uids import validate_uid

__all__ = ["SpoolWriter", "SpooledFile", "PendingFile", "StoreOutcome", "InstanceLocation", "SpoolError", "SpoolFull"]

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

    @cached_property
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


def _digest_of(path: str) -> str:
    digest = _new_digest()
    with open(path, "rb") as handle:
        while block := handle.read(_READ_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _make_dir(path: str) -> None:
    try:
        os.mkdir(path, DIR_MODE)  # patient data: 0750 at most, whatever the umask
    except FileExistsError:
        pass


def _ignore(_spooled: SpooledFile) -> None:
    return None


_LIBC = None


def _syncfs(fd: int) -> int:
    """libc's ``syncfs(fd)``: 0 on success, -1 on failure (``ctypes_errno()`` says why), -2 where there is none."""
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL(None, use_errno=True)
        function = _LIBC.syncfs
    except (OSError, AttributeError):
        return -2
    return int(function(fd))


def ctypes_errno() -> int:
    return ctypes.get_errno() or errno.EIO


class PendingFile:
    """A new instance file being filled: unnamed (``temp_path`` None) or a named temporary file, until published.

    Its size and SHA-256 digest follow every :meth:`write`; :meth:`read` and :meth:`chunks` read back what was written
    (the intake reads a STOW-RS part's header from it). :meth:`discard` (or publishing) closes it; an unnamed file
    that is never linked vanishes with its descriptor.
    """

    def __init__(self, fd: int, temp_path: str | None) -> None:
        self.fd = fd
        self.temp_path = temp_path
        self.size = 0
        self._digest = _new_digest()
        self._known_digest: str | None = None  # set by SpoolWriter.copy_into_new_file: the bytes were checked before

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self._digest.update(view)
        self.size += len(view)
        with _spool_errors(self.temp_path or "the spool"):
            while view:
                written = os.write(self.fd, view)
                view = view[written:]

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes written at ``offset``."""
        with _spool_errors(self.temp_path or "the spool"):
            return os.pread(self.fd, max(0, min(size, self.size - offset)), offset)

    def chunks(self, offset: int, chunk_size: int = _READ_CHUNK) -> Iterator[bytes]:
        """What was written from ``offset`` on, ``chunk_size`` bytes at a time."""
        while offset < self.size:
            block = self.read(offset, chunk_size)
            if not block:
                return
            offset += len(block)
            yield block

    @property
    def digest(self) -> str:
        if self._known_digest is not None:
            return self._known_digest
        return self._digest.hexdigest()

    def discard(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
        if self.temp_path is not None:
            _remove(self.temp_path)
            self.temp_path = None

    def __enter__(self) -> PendingFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()


@contextmanager
def _spool_errors(where: object) -> Iterator[None]:
    """OSError -> SpoolFull (ENOSPC, EDQUOT) or SpoolError, naming the spool."""
    try:
        yield
    except SpoolError:
        raise
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise SpoolFull(exc.errno, f"the spool's disk is full ({where})") from exc
        raise SpoolError(exc.errno, f"cannot write to the spool ({where}): {exc.strerror}") from exc


class _DirectorySync:
    """fsync of directories shared by concurrent writers: one fsync covers every link made before it started.

    Under load many C-STOREs land in the same series directory at once; they wait for one directory fsync together
    (a group commit) instead of queueing one fsync each.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._requested: dict[str, int] = {}
        self._done: dict[str, int] = {}
        self._running: set[str] = set()
        self._waiting: dict[str, int] = {}

    def sync(self, directory: str) -> None:
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

    def __init__(self, root: Path, *, durable: bool = True, unnamed_files: bool | None = None) -> None:
        """``unnamed_files``: None uses them where the spool's file system and kernel allow (probed on first
        write), False always writes named temporary files, True requires unnamed files (raises if unavailable)."""
        self.root = Path(root)
        self._root = os.fspath(self.root)  # the hot path joins strings: pathlib costs more than the rest of it
        self.durable = durable
        self._unnamed_wanted = unnamed_files
        self._linker: AnonymousLinker | None = None
        self._linker_probed = False
        self._incoming = self.root / INCOMING_DIR
        self._known_dirs: set[str] = set()
        self._dir_lock = threading.Lock()
        self._dir_sync = _DirectorySync()

    # -- start-up -------------------------------------------------------------------------------------------------

    def prepare(self) -> int:
        """Create the spool and remove temporary files a crash left behind; return how many were removed."""
        make_private_dirs(self._incoming)
        self._unnamed_linker()
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

    def new_file(self) -> PendingFile:
        """An empty pending file to fill (raises ``SpoolFull`` or ``SpoolError``)."""
        with _spool_errors(self.root):
            temp = None
            if self._unnamed_linker() is None:
                temp = f"{self._root}/{INCOMING_DIR}/{os.getpid()}-{uuid.uuid4().hex}{_TEMP_SUFFIX}"
            return PendingFile(self._open_new(temp), temp)

    def write(
        self,
        location: InstanceLocation,
        chunks: Sequence[bytes],
        *,
        on_linked: Callable[[SpooledFile], None] | None = None,
    ) -> SpooledFile:
        """Store the concatenation of ``chunks`` for ``location`` (:meth:`new_file`, write, :meth:`publish`)."""
        with self.new_file() as pending:
            for chunk in chunks:
                pending.write(chunk)
            return self.publish(pending, location, on_linked=on_linked)

    def copy_into_new_file(self, source_fd: int, offset: int, size: int, digest: str) -> PendingFile:
        """A pending file holding ``size`` bytes of ``source_fd`` from ``offset`` (copied inside the kernel where the
        file system allows), whose SHA-256 ``digest`` the caller already knows (the journal checked it)."""
        pending = self.new_file()
        try:
            with _spool_errors(self.root):
                copied = 0
                while copied < size:
                    try:
                        step = os.copy_file_range(source_fd, pending.fd, size - copied, offset + copied, copied)
                    except OSError as exc:
                        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                            raise
                        step = 0
                    if step <= 0:  # no copy_file_range here (or a short source): the plain way
                        block = os.pread(source_fd, min(_READ_CHUNK, size - copied), offset + copied)
                        if not block:
                            raise SpoolError(errno.EIO, "the journal ended before the instance's last byte")
                        step = os.pwrite(pending.fd, block, copied)
                    copied += step
        except BaseException:
            pending.discard()
            raise
        pending.size = size
        pending._known_digest = digest
        return pending

    def existing_digest(self, relative_path: str) -> str | None:
        """The SHA-256 of the file at ``relative_path`` in the spool, or None when there is none."""
        try:
            return _digest_of(f"{self._root}/{relative_path}")
        except FileNotFoundError:
            return None

    def sync_file_system(self) -> None:
        """Make every file and name written to the spool so far durable: one ``syncfs`` of the spool's file system
        (Linux), else ``os.sync``. Used by the journal's background step after it has linked a batch of files."""
        if not self.durable:
            return
        with _spool_errors(self.root):
            fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                result = _syncfs(fd)
                if result == -2:
                    os.sync()
                elif result != 0:
                    code = ctypes_errno()
                    raise OSError(code, os.strerror(code))
            finally:
                os.close(fd)

    def publish(
        self, pending: PendingFile, location: InstanceLocation, *,
        on_linked: Callable[[SpooledFile], None] | None = None, sync: bool = True,
    ) -> SpooledFile:
        """Make ``pending`` the instance at ``location``, durably; never overwrite another file. Closes ``pending``.

        ``on_linked`` is called once the file's data is durable and its final name is decided and linked (or found
        to hold these bytes already), before the directory fsync that makes the name durable. ``publish`` returns
        only after that directory fsync. ``sync=False`` skips both syncs (the file's and its directory's): the
        caller makes them durable later (the journal's background step, :meth:`sync_file_system`).
        Raises ``SpoolFull`` when the disk is full and ``SpoolError`` for other I/O failures; nothing is left behind.
        """
        try:
            with _spool_errors(self.root):
                if self.durable and sync:
                    os.fdatasync(pending.fd)  # data and size; the name is made durable by the directory fsync
                series_dir = self._ensure_dir(location)
                fd, temp = pending.fd, pending.temp_path
                if temp is None:
                    linker = self._unnamed_linker()

                    def link(target: str) -> None:
                        linker(fd, target)
                else:
                    def link(target: str) -> None:
                        os.link(temp, target)
                spooled = self._publish(location, series_dir, link, pending.size, pending.digest, on_linked or _ignore,
                                        sync_directory=sync)
                return spooled
        finally:
            pending.discard()

    def _unnamed_linker(self) -> AnonymousLinker | None:
        """How to name an unnamed file in this spool (probed once), or None for named temporary files."""
        if not self._linker_probed and self._unnamed_wanted is not False and self._incoming.is_dir():
            found = probe(self._incoming)
            if found is None and self._unnamed_wanted:
                raise SpoolError(errno.EOPNOTSUPP, f"unnamed files (O_TMPFILE) are not available in {self.root}")
            self._linker = None if found is None else found[1]
            self._linker_probed = True
            LOGGER.debug("spool %s writes %s", self.root,
                         "named temporary files" if found is None else f"unnamed files named by {found[0]}")
        return self._linker

    @property
    def writes_unnamed_files(self) -> bool:
        """Whether instances are written as unnamed files (else as named temporary files in ``.incoming``)."""
        return self._unnamed_linker() is not None

    def _open_new(self, temp: str | None) -> int:
        """A new file to fill, open for reading and writing: unnamed in ``.incoming``, or the temporary file ``temp``."""
        if temp is None:
            return open_anonymous(self._incoming)
        return os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)

    def _publish(
        self, location: InstanceLocation, series_dir: str, link: Callable[[str], None], size: int, digest: str,
        on_linked: Callable[[SpooledFile], None], *, sync_directory: bool = True,
    ) -> SpooledFile:
        if not sync_directory:
            series_dir = ""  # _announce skips the directory fsync
        primary = f"{location.series_dir}/{location.primary_name}"
        if self._link(link, f"{self._root}/{primary}"):
            return self._announce(SpooledFile(primary, size, digest, StoreOutcome.STORED, conflict=False), series_dir,
                                  on_linked)
        if _digest_of(f"{self._root}/{primary}") == digest:
            # Already there; the directory is synced anyway, in case the first copy's name is not durable yet.
            return self._announce(SpooledFile(primary, size, digest, StoreOutcome.DUPLICATE, conflict=False),
                                  series_dir, on_linked)
        copy = f"{location.series_dir}/{location.conflict_name(digest)}"
        if self._link(link, f"{self._root}/{copy}"):
            return self._announce(SpooledFile(copy, size, digest, StoreOutcome.CONFLICT, conflict=True), series_dir,
                                  on_linked)
        # The digest is in the name: this very content was already kept as a conflicting copy.
        return self._announce(SpooledFile(copy, size, digest, StoreOutcome.DUPLICATE, conflict=True), series_dir,
                              on_linked)

    def _announce(
        self, spooled: SpooledFile, series_dir: str, on_linked: Callable[[SpooledFile], None]
    ) -> SpooledFile:
        on_linked(spooled)
        if series_dir:
            self._sync(series_dir)
        return spooled

    @staticmethod
    def _link(link: Callable[[str], None], target: str) -> bool:
        try:
            link(target)
        except FileExistsError:
            return False
        return True

    def _sync(self, directory: str) -> None:
        if self.durable:
            self._dir_sync.sync(directory)

    def _ensure_dir(self, location: InstanceLocation) -> str:
        series_dir = f"{self._root}/{location.series_dir}"
        if location.series_dir in self._known_dirs and os.path.isdir(series_dir):
            return series_dir
        with self._dir_lock:
            study_dir = f"{self._root}/{location.study_uid}"
            created_study = not os.path.isdir(study_dir)
            _make_dir(study_dir)
            created_series = not os.path.isdir(series_dir)
            _make_dir(series_dir)
            if created_study:
                self._sync(self._root)
            if created_series:
                self._sync(study_dir)
            self._known_dirs.add(location.series_dir)
        return series_dir
