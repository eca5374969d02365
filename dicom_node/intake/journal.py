"""The durable step with one sync: an append-only journal per receiving process, group-committed.

:class:`JournalStore` is the intake's :class:`~dicom_node.intake.intake.DurableStore` in the node and in STOW-RS.
For each instance, on the critical path of its C-STORE (or STOW-RS part):

1. the instance's record (what the database will hold, ``ReceivedInstance``) and its bytes (File Meta + data set)
   are appended to the process's journal segment, in one ``pwritev`` into space preallocated when the segment was
   made (writing into allocated space keeps the sync to the data: measured on this machine's ext4, an fdatasync
   after appending 512 KiB took 12-15 ms, after overwriting preallocated space 3 ms);
2. one ``fdatasync`` of the segment makes it durable, shared by every instance appended before that sync began
   (group commit: the associations of this process waiting at that moment wait for one sync together);
3. the success status is answered.

A background thread (the *materialiser*) then has each journaled instance filed by the :class:`JournalFiler`: a
file under its final name in the spool (copied from the journal inside the kernel, linked, never overwriting) and a
row in the database. A receiving process of ``DICOM_RECEIVERS`` > 1 files nothing itself: its materialiser ships
each batch (segment path, offset, record: :data:`ShippedItem`) to the node's own process (a
:class:`FilingProcess`), whose filer does the same and answers; it keeps its interpreter for receiving. Per batch of whatever queued up meanwhile: every file's bytes into an unnamed file, one
``syncfs`` of the spool's file system (the bytes durable before any name points at them), the names, a second
``syncfs`` (the names durable), then the rows (the recorder's group commit), then the association ends that came
after them, in order. A segment is deleted once every record in it has its durable file and committed row. So a
row is never committed before its file and name are durable.

Start-up (:meth:`JournalStore.start`, or :meth:`JournalFiler.replay_orphans` in the node's own process before its
receiving processes start and again whenever one dies): every segment no live process holds (``flock``) is replayed: each record
whose bytes match their SHA-256 is materialised as above (idempotent: a file already there with these bytes is a
duplicate, and a duplicate whose path has a row is not recorded again); the first record that is short or does not
match ends that segment (nothing after it can have been acknowledged: an acknowledgement waits for a sync that
covers every byte written before it). The segment is then deleted. Segments live in ``<spool>/.journal`` (0700),
each file 0600.

The promise: a success status means the instance's bytes and its record are on disk (the journal); after a crash
or power cut, the node's next start gives it its file and its row exactly once. What the sender never saw
acknowledged is either absent or present whole (a sync that completed before the kill); never torn. The name an
instance is given is decided when it is journaled (its first copy, or a conflicting copy beside it: the status says
which); another process storing the same SOP Instance UID with other bytes at the same moment can make the file a
conflicting copy when it is linked (flagged as such in its row).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from dicom_node.intake.recording import (
    InstanceRecorder,
    ReceivedInstance,
    RecorderError,
    begin_recording,
)
from dicom_node.intake.spool import (
    InstanceLocation,
    PendingFile,
    SpooledFile,
    SpoolError,
    SpoolWriter,
    StoreOutcome,
    _fsync_dir,
    _new_digest,
    _spool_errors,
)

__all__ = ["JournalStore", "JournalFiler", "FilingProcess", "FilingProcessGone", "ShippedItem", "MemoryFile",
           "JOURNAL_DIR", "SEGMENT_BYTES"]

LOGGER = logging.getLogger(__name__)

JOURNAL_DIR = ".journal"
SEGMENT_BYTES = 64 << 20  # a segment's preallocated size; an instance larger than that gets a segment of its own
_SUFFIX = ".journal"
_NEW_SUFFIX = ".new"  # a segment being made: renamed to .journal once locked, so no one takes it for an orphan
_MAGIC = b"M3J1"
_HEADER = struct.Struct("<4sIQI")  # magic, record length, data length, CRC-32 of the record
_READ_CHUNK = 1 << 20
_BATCH = 128  # instances materialised per batch at most (each holds an open file until linked)
_LINGER_SECONDS = 0.1  # how long the background step waits for a batch to fill (unless someone waits for it)
_RETRY_SECONDS = 1.0


class MemoryFile:
    """A C-STORE data set (with its File Meta) held in memory until the journal writes it: the same interface as the
    spool's :class:`PendingFile` where the intake uses it (``write``, ``size``, ``digest``, ``read``, ``chunks``,
    ``discard``)."""

    fd = -1

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []
        self.size = 0
        self._digest = _new_digest()

    def write(self, data: bytes | memoryview) -> None:
        self._digest.update(data)
        self.parts.append(data)
        self.size += len(data)

    @property
    def digest(self) -> str:
        return self._digest.hexdigest()

    def read(self, offset: int, size: int) -> bytes:
        return b"".join(bytes(p) for p in self.chunks(0))[offset:offset + size]

    def chunks(self, offset: int = 0) -> Iterator[bytes | memoryview]:
        for part in self.parts:
            if offset >= len(part):
                offset -= len(part)
                continue
            yield memoryview(part)[offset:]
            offset = 0

    def discard(self) -> None:
        self.parts = []

    def __enter__(self) -> MemoryFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()


# -- records --------------------------------------------------------------------------------------------------------


def _encode(instance: ReceivedInstance) -> bytes:
    fields = dataclasses.asdict(instance)
    fields["received_at"] = instance.received_at.isoformat()
    return json.dumps(fields, separators=(",", ":")).encode()


def _decode(record: bytes) -> ReceivedInstance:
    fields = json.loads(record)
    fields.pop("dicom_json", None)  # journaled by an earlier version (always null then): kept by the service now
    fields["received_at"] = datetime.fromisoformat(fields["received_at"])
    return ReceivedInstance(**fields)


@dataclass
class _Segment:
    path: str
    fd: int
    capacity: int
    size: int = 0  # bytes of records written
    outstanding: int = 0  # records not yet materialised
    retired: bool = False  # no more records will be appended

    def close_and_remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)


@dataclass
class _Entry:
    segment: _Segment
    data_offset: int
    instance: ReceivedInstance
    claimed: str | None = None  # the name this process reserved for it (released once linked)


@dataclass
class _Ended:
    study_uids: tuple[str, ...]
    ended_at: datetime


def _read_records(fd: int) -> Iterator[tuple[int, ReceivedInstance]]:
    """(data offset, record) of each whole record of a segment, in order, up to the first one that is not whole."""
    offset, end = 0, os.fstat(fd).st_size
    while offset + _HEADER.size <= end:
        magic, record_length, data_length, crc = _HEADER.unpack(os.pread(fd, _HEADER.size, offset))
        if magic != _MAGIC or offset + _HEADER.size + record_length + data_length > end:
            return
        record = os.pread(fd, record_length, offset + _HEADER.size)
        if len(record) != record_length or zlib.crc32(record) != crc:
            return
        try:
            instance = _decode(record)
        except (ValueError, TypeError):
            return
        data_offset = offset + _HEADER.size + record_length
        digest, position = _new_digest(), data_offset
        while position < data_offset + data_length:
            block = os.pread(fd, min(_READ_CHUNK, data_offset + data_length - position), position)
            if not block:
                return
            digest.update(block)
            position += len(block)
        if data_length != instance.size_bytes or digest.hexdigest() != instance.digest:
            return
        yield data_offset, instance
        offset = data_offset + data_length


# What a receiving process ships to the node's own process, in journal order: ("instance", segment path, data offset,
# record) for each instance it acknowledged, ("ended", study UIDs, ended at) for each sender that ended after them.
ShippedItem = tuple


class FilingProcessGone(RuntimeError):
    """The process that files for this one is gone (it died or stopped): what is journaled stays for its next start."""


class FilingProcess(Protocol):
    """Another process that files what this one journals: a receiving process ships to the node's own process."""

    def file(self, items: list[ShippedItem]) -> None:
        """Return once every item is filed (files, names and rows durable); raise ``RecorderError`` to be asked
        again later, ``FilingProcessGone`` when it is gone."""


class JournalFiler:
    """The filing step: journaled instances made files under their names and rows (see the module's docstring), the
    sender ends told after them, and the replay of segments no live process holds. Thread-safe.

    A process that journals for itself files through one (its :class:`JournalStore`'s background step); the node's
    own process files through one for its receiving processes (``DICOM_RECEIVERS`` > 1: :meth:`file_shipped`), so that
    a receiving process spends its interpreter on receiving alone.
    """

    def __init__(self, spool: SpoolWriter, recorder: InstanceRecorder, directory: Path | None = None) -> None:
        self.spool = spool
        self.recorder = recorder
        self.directory = Path(directory) if directory is not None else spool.root / JOURNAL_DIR
        self._dir = os.fspath(self.directory)

    def prepare(self) -> None:
        """Make the journal folder (0700) and its name durable."""
        with _spool_errors(self.directory):
            os.makedirs(self._dir, mode=0o700, exist_ok=True)
            os.chmod(self._dir, 0o700)
            # The folder's own name (and the spool's, in HOME) must be durable before anything journaled in it is
            # acknowledged: a directory's fsync covers its entries, not its own name in its parent.
            _fsync_dir(os.path.dirname(self._dir))
            _fsync_dir(os.path.dirname(os.path.dirname(self._dir)))

    def file(self, entries: list[_Entry]) -> None:
        """File the entries: their bytes into unnamed files, one syncfs (data durable before any name points at it:
        a power cut never leaves a name on bytes that did not reach the disk), the names, a second syncfs (names
        durable), then the rows (never a row before its file and name)."""
        pendings = []
        try:
            for entry in entries:
                instance = entry.instance
                pendings.append(self.spool.copy_into_new_file(entry.segment.fd, entry.data_offset,
                                                              instance.size_bytes, instance.digest))
            if pendings:
                self.spool.sync_file_system()
            instances = []
            for entry, pending in zip(entries, pendings):
                instance = entry.instance
                location = InstanceLocation(instance.study_uid, instance.series_uid, instance.sop_instance_uid)
                spooled = self.spool.publish(pending, location, sync=False)
                instances.append(dataclasses.replace(
                    instance, relative_path=spooled.relative_path, conflict=spooled.conflict,
                    duplicate=spooled.outcome is StoreOutcome.DUPLICATE))
        finally:
            for pending in pendings:
                pending.discard()  # published ones are closed already
        if instances:
            self.spool.sync_file_system()
        waits = [begin_recording(self.recorder, instance) for instance in instances]
        for wait in waits:
            wait()

    def ended(self, study_uids: Collection[str], ended_at: datetime) -> None:
        """A sender ended (after the rows of everything it stored): told to the recorder."""
        if not study_uids:
            return
        try:
            self.recorder.associations_ended(study_uids, ended_at)
        except Exception:  # noqa: BLE001 - bookkeeping: the idle timer completes the studies otherwise
            LOGGER.exception("could not record the end of a sender for %d study(ies)", len(study_uids))

    def file_shipped(self, items: list[ShippedItem]) -> None:
        """File what a receiving process shipped (its segments are read here, never changed: it deletes them once
        this returns). Raises ``OSError`` or ``RecorderError`` when it could not (the process ships them again)."""
        segments: dict[str, _Segment] = {}
        try:
            run: list[_Entry] = []
            for item in items:
                if item[0] == "instance":
                    _, path, data_offset, instance = item
                    segment = segments.get(path)
                    if segment is None:
                        segment = segments[path] = _Segment(path, self._open_segment(path), 0, retired=True)
                    run.append(_Entry(segment, int(data_offset), instance))
                    continue
                if run:
                    self.file(run)
                    run = []
                _, study_uids, ended_at = item
                self.ended(tuple(study_uids), ended_at)
            if run:
                self.file(run)
        finally:
            for segment in segments.values():
                os.close(segment.fd)

    def _open_segment(self, path: str) -> int:
        if os.path.dirname(path) != self._dir or not path.endswith(_SUFFIX):
            raise SpoolError(errno.EINVAL, "a receiving process named a journal segment outside the journal")
        with _spool_errors(self.directory):
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def replay_orphans(self) -> int:
        """File every segment left by a process that is gone; return how many instances they held."""
        replayed = segments = 0
        try:
            names = sorted(os.listdir(self._dir))
        except FileNotFoundError:
            return 0
        for name in names:
            if not name.endswith((_SUFFIX, _NEW_SUFFIX)):
                continue
            path = f"{self._dir}/{name}"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # another process replayed it meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a live process's segment
                continue
            if os.fstat(fd).st_nlink == 0:  # replayed and removed by another process between listdir and open
                os.close(fd)
                continue
            segment = _Segment(path, fd, 0, retired=True)
            if name.endswith(_SUFFIX):
                entries = [_Entry(segment, offset, dataclasses.replace(instance, opens_association=False))
                           for offset, instance in _read_records(fd)]
                for start in range(0, len(entries), _BATCH):
                    self.file(entries[start:start + _BATCH])
                replayed += len(entries)
                segments += 1
            segment.close_and_remove()
        if segments:
            LOGGER.warning("replayed %d instance(s) from %d journal segment(s) of a process that stopped before "
                           "filing them", replayed, segments)
        return replayed


class JournalStore:
    """The durable step by journal (see the module's docstring). Thread-safe; one per process."""

    def __init__(self, spool: SpoolWriter, recorder: InstanceRecorder, directory: Path | None = None, *,
                 segment_bytes: int = SEGMENT_BYTES, filing_process: FilingProcess | None = None) -> None:
        """``filing_process``: another process files what this one journals (a receiving process: the node's own
        process); it also replays what a process that is gone left, so this one replays nothing at start."""
        self.spool = spool
        self.recorder = recorder
        self.filer = JournalFiler(spool, recorder, directory)
        self.filing_process = filing_process
        self.directory = self.filer.directory
        self._dir = os.fspath(self.directory)
        self._segment_bytes = segment_bytes
        self._append_lock = threading.Lock()
        self._segment: _Segment | None = None
        self._appended = 0  # records appended (their writes complete)
        self._sync = threading.Condition()
        self._synced = 0  # records covered by a completed fdatasync
        self._syncing = False
        self._failed: OSError | None = None
        self._names_lock = threading.Lock()
        self._claimed: dict[str, tuple[str, int]] = {}  # relative path -> (digest, records waiting to be linked)
        self._work = threading.Condition()
        self._queue: deque[_Entry | _Ended] = deque()
        self._busy = False
        self._hurry = 0  # callers of wait_until_recorded: no lingering while they wait
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.replayed = 0  # instances replayed at start (tests read it)
        self.syncs = 0  # journal fdatasyncs on the critical path (the bench and tests read it)

    # -- start and stop -------------------------------------------------------------------------------------------

    def start(self) -> JournalStore:
        """Replay the segments no live process holds, then accept instances. Idempotent."""
        with self._work:
            if self._thread is not None:
                return self
            self._stopping = self._closed = False
        self.filer.prepare()
        if self.filing_process is None:
            with _spool_errors(self.directory):
                self.replayed = self.filer.replay_orphans()
        thread = threading.Thread(target=self._materialise_forever, name="journal-materialiser", daemon=True)
        with self._work:
            self._thread = thread
        thread.start()
        return self

    def close(self, timeout: float = 120.0) -> None:
        """Materialise what is queued, then stop; a segment fully materialised is deleted (else replayed later)."""
        with self._work:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._closed = True
            self._work.notify_all()
        if thread is not None:
            thread.join(timeout)
        with self._append_lock:
            segment, self._segment = self._segment, None
        if segment is not None:
            segment.retired = True
            if segment.outstanding == 0:
                segment.close_and_remove()
            else:
                os.close(segment.fd)  # left for the next start to replay

    def wait_until_recorded(self, timeout: float = 60.0) -> bool:
        """Wait until everything journaled so far has its file and row (STOW-RS answers after this; tests use
        it). True if it did within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._work:
            self._hurry += 1
            self._work.notify_all()
        try:
            return self._wait_until_idle(deadline)
        finally:
            with self._work:
                self._hurry -= 1

    def _wait_until_idle(self, deadline: float) -> bool:
        with self._work:
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None:
                    return not (self._queue or self._busy)
                self._work.wait(remaining)
        return True

    # -- DurableStore -------------------------------------------------------------------------------------------

    def new_file(self) -> MemoryFile:
        return MemoryFile()

    def persist(
        self, pending: PendingFile | MemoryFile, location: InstanceLocation,
        describe: Callable[[SpooledFile], ReceivedInstance], recorded: Callable[[ReceivedInstance], None],
    ) -> SpooledFile:
        try:
            if self._failed is not None:
                raise SpoolError(self._failed.errno or 5, f"the journal cannot be written: {self._failed}")
            if self._closed:
                raise SpoolError(5, "the journal is closed: the node is stopping")
            if self._thread is None:
                self.start()
            spooled, claimed = self._name(location, pending.size, pending.digest)
            try:
                instance = describe(spooled)
                segment, data_offset, sequence = self._append(_encode(instance), pending)
            except BaseException:
                self._release(claimed)
                raise
        finally:
            pending.discard()
        try:
            self._wait_for_sync(sequence)
        except BaseException:
            self._release(claimed)  # not acknowledged; a later start may still file it whole (allowed: never torn)
            raise
        recorded(instance)
        with self._work:
            self._queue.append(_Entry(segment, data_offset, instance, claimed))
            self._work.notify_all()
        return spooled

    def ended(self, study_uids: Collection[str], ended_at: datetime) -> None:
        """A sender ended: told to the recorder after the rows of everything it stored (in order)."""
        with self._work:
            self._queue.append(_Ended(tuple(study_uids), ended_at))
            self._work.notify_all()

    # -- names ----------------------------------------------------------------------------------------------------

    def _name(self, location: InstanceLocation, size: int, digest: str) -> tuple[SpooledFile, str | None]:
        """The name the instance will have, decided now (the status depends on it), and the name reserved."""
        primary = f"{location.series_dir}/{location.primary_name}"
        with self._names_lock:
            existing = self._digest_at(primary)
            if existing is None:
                return SpooledFile(primary, size, digest, StoreOutcome.STORED, conflict=False), self._claim(primary,
                                                                                                           digest)
            if existing == digest:
                return SpooledFile(primary, size, digest, StoreOutcome.DUPLICATE, conflict=False), None
            copy = f"{location.series_dir}/{location.conflict_name(digest)}"
            if self._digest_at(copy) is not None:  # the digest is in the name: this content is kept already
                return SpooledFile(copy, size, digest, StoreOutcome.DUPLICATE, conflict=True), None
            return SpooledFile(copy, size, digest, StoreOutcome.CONFLICT, conflict=True), self._claim(copy, digest)

    def _digest_at(self, relative_path: str) -> str | None:
        claimed = self._claimed.get(relative_path)
        if claimed is not None:
            return claimed[0]
        return self.spool.existing_digest(relative_path)

    def _claim(self, relative_path: str, digest: str) -> str:
        _, count = self._claimed.get(relative_path, (digest, 0))
        self._claimed[relative_path] = (digest, count + 1)
        return relative_path

    def _release(self, claimed: str | None) -> None:
        if claimed is None:
            return
        with self._names_lock:
            digest, count = self._claimed[claimed]
            if count <= 1:
                del self._claimed[claimed]
            else:
                self._claimed[claimed] = (digest, count - 1)

    # -- the journal ----------------------------------------------------------------------------------------------

    def _new_segment(self, capacity: int) -> _Segment:
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        new_path = f"{self._dir}/{name}{_NEW_SUFFIX}"
        fd = os.open(new_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while this process lives: not an orphan
            os.posix_fallocate(fd, 0, capacity)
            os.fsync(fd)
            path = f"{self._dir}/{name}{_SUFFIX}"
            os.rename(new_path, path)
            _fsync_dir(self._dir)
        except BaseException:
            os.close(fd)
            for leftover in (new_path, f"{self._dir}/{name}{_SUFFIX}"):
                try:
                    os.unlink(leftover)
                except FileNotFoundError:
                    pass
            raise
        return _Segment(path, fd, capacity)

    def _append(self, record: bytes, pending: PendingFile | MemoryFile) -> tuple[_Segment, int, int]:
        header = _HEADER.pack(_MAGIC, len(record), pending.size, zlib.crc32(record))
        length = len(header) + len(record) + pending.size
        with self._append_lock, _spool_errors(self.directory):
            segment = self._segment
            if segment is None or segment.size + length > segment.capacity:
                if segment is not None:
                    os.fdatasync(segment.fd)  # what it holds is durable before the next segment takes over
                    with self._sync:
                        self._synced = max(self._synced, self._appended)
                    segment.retired = True
                    if segment.outstanding == 0:
                        segment.close_and_remove()
                segment = self._segment = self._new_segment(max(self._segment_bytes, length))
            offset = segment.size
            data_offset = offset + len(header) + len(record)
            if isinstance(pending, MemoryFile):
                _write_all(segment.fd, [header, record, *pending.parts], offset)
            else:
                _write_all(segment.fd, [header, record], offset)
                _copy_all(pending.fd, segment.fd, pending.size, data_offset)
            segment.size = offset + length
            segment.outstanding += 1
            self._appended += 1
            return segment, data_offset, self._appended

    def _wait_for_sync(self, sequence: int) -> None:
        """Return once a fdatasync that began after record ``sequence`` was written has completed (group commit:
        whoever finds no sync running starts one for everything appended so far; the others wait for it)."""
        with self._sync:
            while self._synced < sequence:
                if self._failed is not None:
                    raise SpoolError(self._failed.errno or 5, f"the journal could not be synced: {self._failed}")
                if self._syncing:
                    self._sync.wait()
                    continue
                self._syncing = True
                self._sync.release()  # never wait for the append lock while holding this one (rotation: the reverse)
                error, fd, target = None, -1, 0
                try:
                    with self._append_lock:
                        target = self._appended
                        fd = os.dup(self._segment.fd) if self._segment is not None else -1
                    if fd >= 0:
                        os.fdatasync(fd)
                except OSError as exc:
                    error = exc
                finally:
                    if fd >= 0:
                        os.close(fd)
                    self._sync.acquire()
                    self._syncing = False
                    self._sync.notify_all()
                if error is not None:  # after a failed fsync nothing written before it can be trusted: stop
                    LOGGER.error("the journal's fdatasync failed (%s): this process takes no more instances",
                                 error.strerror)
                    self._failed = error
                    continue
                self.syncs += 1
                self._synced = max(self._synced, target)

    # -- the background step --------------------------------------------------------------------------------------

    def _materialise_forever(self) -> None:
        while True:
            with self._work:
                while not self._queue and not self._stopping:
                    self._work.wait()
                if not self._queue:
                    return
                # Linger a moment for more: one batch, one syncfs and one commit for many instances (over one
                # association they come one at a time) costs far less CPU than one of each per instance.
                deadline = time.monotonic() + _LINGER_SECONDS
                while (len(self._queue) < _BATCH and not self._stopping and not self._hurry
                       and not isinstance(self._queue[-1], _Ended)):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._work.wait(remaining)
                batch: list[_Entry | _Ended] = []
                while self._queue and len(batch) < _BATCH:
                    batch.append(self._queue.popleft())
                    if isinstance(batch[-1], _Ended):
                        break
                self._busy = True
            try:
                self._materialise_batch(batch)
            finally:
                with self._work:
                    self._busy = False
                    self._work.notify_all()

    def _materialise_batch(self, batch: list[_Entry | _Ended]) -> None:
        entries = [item for item in batch if isinstance(item, _Entry)]
        while True:  # the journal holds them: keep trying (a full disk, a database away) rather than lose them
            try:
                if self.filing_process is not None:
                    self.filing_process.file([_shipped(item) for item in batch])
                else:
                    self._materialise(entries)
                break
            except FilingProcessGone:
                # Stopping with the node's process gone: each segment stays (outstanding) for its next start.
                LOGGER.warning("%d journaled instance(s) left for the node's next start to file: the node's process "
                               "is gone", len(entries))
                return
            except (OSError, RecorderError) as exc:
                LOGGER.error("cannot file %d journaled instance(s) yet (%s: %s); trying again in %g s", len(entries),
                             exc.__class__.__name__, exc, _RETRY_SECONDS)
                time.sleep(_RETRY_SECONDS)
        for entry in entries:
            self._release(entry.claimed)
            entry.claimed = None
            with self._append_lock:
                entry.segment.outstanding -= 1
                if entry.segment.retired and entry.segment.outstanding == 0:
                    entry.segment.close_and_remove()
        if self.filing_process is None:
            for item in batch:
                if isinstance(item, _Ended):
                    self.filer.ended(item.study_uids, item.ended_at)

    def _materialise(self, entries: list[_Entry]) -> None:
        self.filer.file(entries)


def _shipped(item: _Entry | _Ended) -> ShippedItem:
    if isinstance(item, _Ended):
        return ("ended", item.study_uids, item.ended_at)
    return ("instance", item.segment.path, item.data_offset, item.instance)


def _write_all(fd: int, parts: list[bytes | memoryview], offset: int) -> None:
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        written = os.pwritev(fd, views[:1024], offset)
        offset += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]


def _copy_all(source_fd: int, target_fd: int, size: int, offset: int) -> None:
    copied = 0
    while copied < size:
        try:
            step = os.copy_file_range(source_fd, target_fd, size - copied, copied, offset + copied)
        except OSError:
            step = 0
        if step <= 0:
            block = os.pread(source_fd, min(_READ_CHUNK, size - copied), copied)
            if not block:
                raise SpoolError(5, "the received file ended before its last byte")
            step = os.pwrite(target_fd, block, offset + copied)
        copied += step
