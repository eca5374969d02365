import errno
import hashlib
import os
import threading
from pathlib import Path

import pytest

from dicom_node.intake.spool import (
    INCOMING_DIR,
    InstanceLocation,
    SpoolError,
    SpoolFull,
    SpoolWriter,
    StoreOutcome,
)
from dicom_node.uids import InvalidUid, validate_uid

LOCATION = InstanceLocation("1.2.3", "1.2.3.4", "1.2.3.4.5")


@pytest.fixture(params=[True, False], ids=["unnamed-files", "named-temporary-files"])
def spool(tmp_path, request) -> SpoolWriter:
    """Every behaviour holds both with unnamed files (O_TMPFILE, Linux) and with named temporary files."""
    writer = SpoolWriter(tmp_path / "spool", unnamed_files=request.param)
    writer.prepare()
    assert writer.writes_unnamed_files is request.param
    return writer


def test_by_default_the_spool_writes_unnamed_files_where_linux_offers_them(tmp_path):
    writer = SpoolWriter(tmp_path / "spool")
    writer.prepare()
    assert writer.writes_unnamed_files
    writer.write(LOCATION, [b"x"])
    assert list((tmp_path / "spool" / INCOMING_DIR).iterdir()) == []
    assert not SpoolWriter(tmp_path / "other", unnamed_files=False).writes_unnamed_files


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_an_instance_lands_under_study_series_sop_with_size_and_digest(spool):
    stored = spool.write(LOCATION, [b"head", b"-body"])
    assert stored.relative_path == "1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    assert stored.outcome is StoreOutcome.STORED and not stored.conflict
    assert spool.path_of(stored.relative_path).read_bytes() == b"head-body"
    assert stored.size_bytes == 9
    assert stored.digest == hashlib.sha256(b"head-body").hexdigest()
    assert _files(spool.root) == [stored.relative_path]  # no temporary file left behind


def test_identical_resend_is_a_duplicate_of_the_same_file(spool):
    first = spool.write(LOCATION, [b"same bytes"])
    again = spool.write(LOCATION, [b"same bytes"])
    assert again.outcome is StoreOutcome.DUPLICATE and not again.conflict
    assert again.relative_path == first.relative_path
    assert _files(spool.root) == [first.relative_path]


def test_different_content_is_kept_beside_the_first_copy_never_overwriting_it(spool):
    first = spool.write(LOCATION, [b"first version"])
    second = spool.write(LOCATION, [b"second version"])
    assert second.outcome is StoreOutcome.CONFLICT and second.conflict
    assert second.relative_path != first.relative_path
    assert spool.path_of(first.relative_path).read_bytes() == b"first version"
    assert spool.path_of(second.relative_path).read_bytes() == b"second version"
    third = spool.write(LOCATION, [b"second version"])  # the conflicting copy sent again
    assert third.outcome is StoreOutcome.DUPLICATE and third.conflict
    assert third.relative_path == second.relative_path
    assert len(_files(spool.root)) == 2


def test_a_conflict_name_cannot_be_another_instances_primary_name(spool):
    spool.write(LOCATION, [b"a"])
    second = spool.write(LOCATION, [b"b"])
    stem = Path(second.relative_path).name.removesuffix(".dcm")
    with pytest.raises(InvalidUid):  # no SOP Instance UID can be spelled like a conflict copy's name
        validate_uid(stem)


@pytest.mark.parametrize(
    "study, series, sop",
    [("..", "1.2", "1.3"), ("1.2", "../..", "1.3"), ("1.2", "1.3", "../../../etc/passwd"), ("1.2", "1.3", "/abs"),
     ("1.2", "1.3", "1" * 65), ("1.2", "a b", "1.3")],
)
def test_locations_built_from_crafted_uids_are_refused(study, series, sop):
    with pytest.raises(InvalidUid):
        InstanceLocation(study, series, sop)


def test_prepare_removes_partial_files_a_crash_left_behind(tmp_path):
    writer = SpoolWriter(tmp_path / "spool")
    writer.prepare()
    leftover = tmp_path / "spool" / INCOMING_DIR / "123-abc.part"
    leftover.write_bytes(b"half an instance")
    assert writer.prepare() == 1
    assert not leftover.exists()


class _DiskFullSpool(SpoolWriter):
    """Writes its new files to /dev/full, whose writes fail with ENOSPC (the kernel's real error path)."""

    def _open_new(self, temp: str | None) -> int:
        if temp is not None:
            os.symlink("/dev/full", temp)
        return os.open("/dev/full", os.O_WRONLY)


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed-files", "named-temporary-files"])
def test_a_full_disk_raises_spool_full_and_leaves_nothing(tmp_path, unnamed):
    writer = _DiskFullSpool(tmp_path / "spool", unnamed_files=unnamed)
    writer.prepare()
    with pytest.raises(SpoolFull, match="disk is full") as caught:
        writer.write(LOCATION, [b"x" * 65536])
    assert caught.value.errno == errno.ENOSPC
    assert _files(writer.root) == []
    assert not list((tmp_path / "spool" / INCOMING_DIR).iterdir())


def test_other_io_errors_raise_spool_error(tmp_path):
    writer = SpoolWriter(tmp_path / "missing-and-never-prepared")
    with pytest.raises(SpoolError, match="cannot write to the spool"):
        writer.write(LOCATION, [b"x"])


def test_concurrent_writers_of_the_same_instance_keep_exactly_one_file(spool):
    barrier = threading.Barrier(8)
    results = []

    def send() -> None:
        barrier.wait()
        results.append(spool.write(LOCATION, [b"the same content" * 1000]))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.outcome for r in results) == [StoreOutcome.DUPLICATE] * 7 + [StoreOutcome.STORED]
    assert _files(spool.root) == ["1.2.3/1.2.3.4/1.2.3.4.5.dcm"]


def test_many_series_written_concurrently_are_all_durable_and_distinct(spool):
    locations = [InstanceLocation("1.9", f"1.9.{s}", f"1.9.{s}.{i}") for s in range(4) for i in range(25)]

    def send(location: InstanceLocation) -> None:
        spool.write(location, [location.sop_instance_uid.encode()])

    threads = [threading.Thread(target=send, args=(loc,)) for loc in locations]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    files = _files(spool.root)
    assert len(files) == 100
    for location in locations:
        path = spool.root / location.series_dir / location.primary_name
        assert path.read_bytes() == location.sop_instance_uid.encode()


def _watch_syncs(monkeypatch, spool: SpoolWriter, events: list[str]) -> None:
    """Record each directory fsync in ``events`` (the real fsync still runs)."""
    import dicom_node.intake.spool as spool_module

    real = spool_module._fsync_dir

    def fsync_dir(path: str) -> None:
        real(path)
        events.append(f"fsync {Path(path).relative_to(spool.root) if Path(path) != spool.root else '.'}")

    monkeypatch.setattr(spool_module, "_fsync_dir", fsync_dir)


def test_on_linked_sees_the_whole_file_under_its_name_before_the_directory_fsync(spool, monkeypatch):
    events: list[str] = []
    _watch_syncs(monkeypatch, spool, events)

    def linked(spooled) -> None:
        content = spool.path_of(spooled.relative_path).read_bytes()
        events.append(f"linked {spooled.outcome.value} {content!r}")

    stored = spool.write(LOCATION, [b"head", b"-body"], on_linked=linked)
    assert stored.outcome is StoreOutcome.STORED
    assert events[-2:] == ["linked stored b'head-body'", "fsync 1.2.3/1.2.3.4"]  # then write() returns


def test_a_duplicate_waits_for_the_directory_fsync_too(spool, monkeypatch):
    """A re-send may arrive while the first copy's name is not durable yet: its success must wait for the fsync."""
    spool.write(LOCATION, [b"same"])
    events: list[str] = []
    _watch_syncs(monkeypatch, spool, events)
    again = spool.write(LOCATION, [b"same"], on_linked=lambda spooled: events.append("linked"))
    assert again.outcome is StoreOutcome.DUPLICATE
    assert events == ["linked", "fsync 1.2.3/1.2.3.4"]


def test_concurrent_writers_each_return_after_a_directory_fsync_that_began_after_their_link(spool, monkeypatch):
    """The shared directory fsync (one for the writes arriving together) never answers a writer with an fsync that
    started before that writer's link, nor before that fsync has finished."""
    import dicom_node.intake.spool as spool_module

    real = spool_module._fsync_dir
    lock = threading.Lock()
    ticks = iter(range(1_000_000))
    fsyncs: list[tuple[int, int]] = []  # (started, finished)
    linked_at: dict[str, int] = {}
    returned_at: dict[str, int] = {}

    def tick() -> int:
        with lock:
            return next(ticks)

    def fsync_dir(path: Path) -> None:
        started = tick()
        real(path)
        finished = tick()
        with lock:
            fsyncs.append((started, finished))

    monkeypatch.setattr(spool_module, "_fsync_dir", fsync_dir)

    def writer(n: int) -> None:
        location = InstanceLocation("1.2.3", "1.2.3.4", f"1.2.3.4.{n}")

        def linked(spooled) -> None:
            linked_at[spooled.relative_path] = tick()

        stored = spool.write(location, [b"x" * 1000, str(n).encode()], on_linked=linked)
        returned_at[stored.relative_path] = tick()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(returned_at) == 24
    for path, returned in returned_at.items():
        assert any(linked_at[path] < started and finished < returned for started, finished in fsyncs), path
    assert len(fsyncs) < 24 + 2  # shared: never more than one per writer (plus the study and series directories)


def test_the_probe_tries_each_way_of_naming_an_unnamed_file_in_the_spool_itself(tmp_path, monkeypatch):
    """Where AT_EMPTY_PATH is refused (no CAP_DAC_READ_SEARCH before Linux 6.10), /proc/self/fd is tried next, with a
    probe file directly in the spool folder; nothing is left behind either way."""
    from dicom_node.intake import anonymous_files

    tried: list[Path] = []

    def refused() -> anonymous_files.AnonymousLinker:
        def link(fd: int, target: str) -> None:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return link

    def proc_linker(fd: int, target: str) -> None:
        tried.append(Path(target))
        os.link(f"/proc/self/fd/{fd}", target, follow_symlinks=True)

    monkeypatch.setattr(anonymous_files, "_empty_path_linker", refused)
    monkeypatch.setattr(anonymous_files, "_proc_linker", proc_linker)
    found = anonymous_files.probe(tmp_path)
    assert [p.parent for p in tried] == [tmp_path]
    assert found is None or found[0] == "linkat(/proc/self/fd)"  # this sandbox refuses /proc links (EXDEV)
    assert list(tmp_path.iterdir()) == []
