"""The journal (``dicom_node.intake.journal``): what a success waits for, what the background step does in which order,
and what a start replays from a segment its process left (whole records only, each once)."""

from __future__ import annotations

import os
import stat
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

import dicom_node.intake.journal as journal_module
from dicom_node.intake.journal import JournalStore, MemoryFile
from dicom_node.intake.recording import ReceivedInstance
from dicom_node.intake.spool import InstanceLocation, SpoolWriter, StoreOutcome

STUDY, SERIES = "1.2.3", "1.2.3.4"


class _Recorder:
    def __init__(self, events: list[str] | None = None) -> None:
        self.rows: list[ReceivedInstance] = []
        self.ended: list[tuple[str, ...]] = []
        self.events = events if events is not None else []
        self.lock = threading.Lock()

    def record(self, instance: ReceivedInstance) -> None:
        with self.lock:
            self.events.append(f"row {instance.sop_instance_uid}")
            self.rows.append(instance)

    def associations_ended(self, study_uids, ended_at) -> None:
        self.events.append("ended")
        self.ended.append(tuple(study_uids))


def _instance(sop: str, spooled) -> ReceivedInstance:
    return ReceivedInstance(
        study_uid=STUDY, series_uid=SERIES, sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1", relative_path=spooled.relative_path, size_bytes=spooled.size_bytes,
        digest=spooled.digest, conflict=spooled.conflict, duplicate=spooled.outcome is StoreOutcome.DUPLICATE,
        calling_ae="CT", received_at=datetime(2026, 1, 1, tzinfo=timezone.utc), opens_association=True)


def _store(store: JournalStore, sop: str, data: bytes):
    pending = store.new_file()
    pending.write(data)
    return store.persist(pending, InstanceLocation(STUDY, SERIES, sop), lambda spooled: _instance(sop, spooled),
                         lambda instance: None)


@pytest.fixture
def spool(tmp_path) -> SpoolWriter:
    writer = SpoolWriter(tmp_path / "spool")
    writer.prepare()
    return writer


def test_a_success_waits_for_one_journal_sync_and_the_row_follows_its_durable_file(spool, monkeypatch):
    events: list[str] = []
    real_fdatasync, real_syncfs = os.fdatasync, spool.sync_file_system

    def fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        events.append("journal fdatasync" if "/.journal/" in os.readlink(f"/proc/self/fd/{fd}") else "fdatasync")

    def sync_file_system() -> None:
        real_syncfs()
        events.append("syncfs")

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(spool, "sync_file_system", sync_file_system)
    recorder = _Recorder(events)
    store = JournalStore(spool, recorder).start()
    try:
        spooled = _store(store, "1.2.3.4.5", b"instance bytes" * 100)
        events.append("answered")
        assert events == ["journal fdatasync", "answered"]  # one sync on the critical path, nothing else
        assert spooled.outcome is StoreOutcome.STORED
        store.ended([STUDY], datetime(2026, 1, 1, tzinfo=timezone.utc))
        assert store.wait_until_recorded(30)
    finally:
        store.close()
    assert events[2:] == ["syncfs", "syncfs", "row 1.2.3.4.5", "ended"]  # bytes, then name durable; row; end
    assert spool.path_of(spooled.relative_path).read_bytes() == b"instance bytes" * 100
    assert not [p for p in store.directory.iterdir()]  # everything filed: the segment is gone


def test_concurrent_instances_share_journal_syncs(spool, monkeypatch):
    syncs = []
    real = os.fdatasync
    gate = threading.Event()

    def slow_fdatasync(fd: int) -> None:
        gate.wait(5)  # the first sync waits until every thread has appended
        real(fd)
        syncs.append(fd)

    store = JournalStore(spool, _Recorder()).start()
    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    try:
        threads = [threading.Thread(target=_store, args=(store, f"1.2.3.4.{n}", os.urandom(1000))) for n in range(8)]
        for thread in threads:
            thread.start()
        while store._appended < 8:  # every record written, one sync under way
            threading.Event().wait(0.01)
        gate.set()
        for thread in threads:
            thread.join(30)
        assert len(syncs) <= 2  # 8 instances acknowledged after at most two group syncs (not eight)
        assert store.syncs == len(syncs)
    finally:
        gate.set()
        store.close()


def test_journal_files_are_private(spool):
    store = JournalStore(spool, _Recorder()).start()
    try:
        gate = threading.Event()
        store.recorder.record = lambda instance: gate.wait(10)  # keep the segment until checked
        _store(store, "1.2.3.4.5", b"x" * 10)
        [segment] = list(store.directory.iterdir())
        assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
        assert stat.S_IMODE(segment.stat().st_mode) == 0o600
        gate.set()
    finally:
        store.close()


def _crash(store: JournalStore) -> None:
    """What kill -9 leaves: the segment's file as written, its lock released, nothing filed."""
    with store._work:
        store._stopping = True
        store._queue.clear()
        store._work.notify_all()
    os.close(store._segment.fd)  # the lock goes with the descriptor, as with the process


def test_a_start_replays_whole_records_once_and_stops_at_a_torn_one(spool, tmp_path):
    blocked = threading.Event()
    recorder = _Recorder()
    store = JournalStore(spool, recorder).start()
    store._materialise = lambda entries: blocked.wait(30)  # nothing filed before the "crash"
    sent = {f"1.2.3.4.{n}": os.urandom(5000) for n in range(3)}
    for sop, data in sent.items():
        _store(store, sop, data)
    segment = Path(store._segment.path)
    _crash(store)
    blocked.set()
    size = store._segment.size
    with open(segment, "r+b") as handle:  # the last record torn: its last bytes never reached the disk
        handle.seek(size - 100)
        handle.write(b"\0" * 100)

    again = JournalStore(spool, _Recorder()).start()
    try:
        assert again.replayed == 2
        recorded = {row.sop_instance_uid for row in again.recorder.rows}
        assert recorded == {"1.2.3.4.0", "1.2.3.4.1"}
        assert all(not row.opens_association for row in again.recorder.rows)  # that association is over
        for sop in recorded:
            assert spool.path_of(f"{STUDY}/{SERIES}/{sop}.dcm").read_bytes() == sent[sop]
        assert not spool.path_of(f"{STUDY}/{SERIES}/1.2.3.4.2.dcm").exists()  # never a torn file
        assert not segment.exists()
    finally:
        again.close()
    third = JournalStore(spool, _Recorder()).start()  # nothing left to replay: each record once
    third.close()
    assert third.replayed == 0


def test_a_second_copy_with_other_bytes_is_answered_as_a_conflict_before_the_first_is_filed(spool):
    gate = threading.Event()
    store = JournalStore(spool, _Recorder()).start()
    original = store._materialise
    store._materialise = lambda entries: (gate.wait(30), original(entries))
    try:
        first = _store(store, "1.2.3.4.5", b"first")
        same = _store(store, "1.2.3.4.5", b"first")
        other = _store(store, "1.2.3.4.5", b"other")
        assert (first.outcome, same.outcome, other.outcome) == (StoreOutcome.STORED, StoreOutcome.DUPLICATE,
                                                                StoreOutcome.CONFLICT)
        gate.set()
        assert store.wait_until_recorded(30)
    finally:
        gate.set()
        store.close()
    assert spool.path_of(first.relative_path).read_bytes() == b"first"
    assert spool.path_of(other.relative_path).read_bytes() == b"other"


def test_memory_file_reads_back_what_was_written():
    memory = MemoryFile()
    memory.write(b"abc")
    memory.write(memoryview(b"defgh"))
    assert memory.size == 8 and memory.read(2, 4) == b"cdef"
    assert b"".join(bytes(c) for c in memory.chunks(4)) == b"efgh"
    assert journal_module.MemoryFile is MemoryFile


def _segments(store: JournalStore) -> set[str]:
    return {p.name for p in store.directory.iterdir() if p.name.endswith(".journal")}


def test_the_next_segment_is_written_through_ahead_and_taken_at_rotation(spool, monkeypatch):
    """Once a segment is a quarter full the next one is prepared in the background, its blocks written (so a sync in
    it flushes data alone); the rotation takes it instead of allocating one on the critical path, and one that was
    never used is removed at close (or replayed as empty after a crash)."""
    allocated = []
    real_fallocate = os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, offset, size: (allocated.append(size),
                                                                      real_fallocate(fd, offset, size)))
    store = JournalStore(spool, _Recorder(), segment_bytes=64 * 1024).start()
    try:
        _store(store, "1.2.3.4.1", os.urandom(20 * 1024))  # past a quarter of the first segment
        first = Path(store._segment.path)
        while store._spare is None:  # prepared by its thread
            threading.Event().wait(0.01)
        spare = Path(store._spare.path)
        assert spare.read_bytes() == bytes(64 * 1024) and spare.name.endswith(".journal")
        for n in range(2, 6):  # 5 x 20 KiB: the second segment takes over
            _store(store, f"1.2.3.4.{n}", os.urandom(20 * 1024))
        assert Path(store._segment.path) == spare and allocated == [64 * 1024]  # only the first was allocated
        assert store.wait_until_recorded(30)
        assert not first.exists()  # filed, then deleted
    finally:
        store.close()
    assert not [p for p in store.directory.iterdir()]
    assert len(store.recorder.rows) == 5


def test_a_spare_segment_left_by_a_crash_replays_as_empty(spool):
    store = JournalStore(spool, _Recorder(), segment_bytes=64 * 1024).start()
    _store(store, "1.2.3.4.1", os.urandom(20 * 1024))
    while store._spare is None:
        threading.Event().wait(0.01)
    assert store.wait_until_recorded(30)
    os.close(store._spare.fd)  # kill -9: the locks go with the descriptors
    _crash(store)
    again = JournalStore(spool, _Recorder()).start()
    try:
        # the live segment's one record again (filed before: a duplicate), nothing from the spare; both removed
        assert again.replayed == 1 and [row.duplicate for row in again.recorder.rows] == [True]
        assert _segments(again) == set()
    finally:
        again.close()


def test_shipped_batches_are_filed_by_another_filer_in_order(spool):
    """A receiving process (``filing_process``) files nothing itself: its batches, ends included, go to the filer of
    the node's process, which files them from the segment and answers; then the segment is deleted."""
    parent = _Recorder()
    shipped: list[list] = []

    class _Parent:
        filer = journal_module.JournalFiler(spool, parent)

        def file(self, items):
            shipped.append(items)
            self.filer.file_shipped(items)

    store = JournalStore(spool, _Recorder(), filing_process=_Parent()).start()
    try:
        _store(store, "1.2.3.4.1", b"one" * 100)
        store.ended([STUDY], datetime(2026, 1, 1, tzinfo=timezone.utc))
        assert store.wait_until_recorded(30)
    finally:
        store.close()
    assert store.recorder.rows == [] and [row.sop_instance_uid for row in parent.rows] == ["1.2.3.4.1"]
    assert parent.events == ["row 1.2.3.4.1", "ended"]
    kinds = [item[0] for batch in shipped for item in batch]
    assert kinds == ["instance", "ended"]
    assert spool.path_of(f"{STUDY}/{SERIES}/1.2.3.4.1.dcm").read_bytes() == b"one" * 100
    assert not [p for p in store.directory.iterdir()]
    with pytest.raises(journal_module.SpoolError):  # a segment outside the journal is never opened
        _Parent.filer.file_shipped([("instance", "/etc/passwd", 0, parent.rows[0])])
