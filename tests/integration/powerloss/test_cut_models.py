"""The power-loss simulator's models on real programs: the strict cut keeps exactly what syncs cover (names through
their directory, bytes through their file), random cuts only ever produce states the model allows, SQLite's commits
survive with synchronous=FULL and not without, and the cut refuses a tree its recording does not explain."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.powerloss import RecordingMismatch, StillRecording
from tests.support.powerloss.journal import read_journal
from tests.support.powerloss.programs import PRELUDE, read_tree, run_program, write_tree_at

PAGE = 4096


@pytest.mark.parametrize("slow_directory_sync_ms", [0, 5])
def test_strict_cut_keeps_a_name_only_if_its_directory_was_synced_after_it(slow_directory_sync_ms, power_loss,
                                                                           tmp_path):
    """(A slow disk changes when directory syncs finish, not what they cover.)"""
    simulator = power_loss(tmp_path / "root")
    run_program(simulator, slow_directory_sync_ms=slow_directory_sync_ms, code="""
def make(name, data, sync_data):
    fd = create(name)
    os.write(fd, data)
    if sync_data:
        os.fsync(fd)
    os.close(fd)

make("kept", b"synced", True)
make("empty", b"never synced", False)
os.mkdir("sub")
fsync_dir()                     # names so far: kept, empty, sub
make("sub/x", b"in sub", True)
fsync_dir("sub")
os.mkdir("orphan")              # its parent is never synced again: the whole subtree is lost
make("orphan/y", b"lost", True)
fsync_dir("orphan")
make("unnamed", b"synced bytes, no name", True)
fd = os.open("sub/x", os.O_WRONLY)
os.pwrite(fd, b"IN", 0)         # an overwrite nobody syncs
""")
    report = simulator.cut("strict")
    assert read_tree(simulator.root) == {"kept": b"synced", "empty": b"", "sub": None, "sub/x": b"in sub"}
    assert set(report.lost) == {"orphan", "orphan/y", "unnamed"}
    assert set(report.changed) == {"empty", "sub/x"}


def test_strict_cut_of_unnamed_and_temporary_files_linked_into_place(power_loss, tmp_path):
    """The spool's two ways: O_TMPFILE named by linkat, and a named temporary file linked and then removed."""
    write_tree_at(tmp_path / "root", {".incoming": None, "series": None})
    simulator = power_loss(tmp_path / "root")
    run_program(simulator, """
def unnamed(data, sync_data):
    fd = os.open("series", os.O_TMPFILE | os.O_WRONLY, 0o640)
    os.write(fd, data)
    if sync_data:
        os.fdatasync(fd)
    return fd

check(libc.linkat(unnamed(b"A" * 5000, True), b"", AT_FDCWD, b"series/a.dcm", AT_EMPTY_PATH))
check(libc.linkat(unnamed(b"B" * 5000, False), b"", AT_FDCWD, b"series/b.dcm", AT_EMPTY_PATH))
fd = create(".incoming/d.part")
os.write(fd, b"D" * 5000)
os.fdatasync(fd)
os.link(".incoming/d.part", "series/d.dcm")
fsync_dir("series")
os.unlink(".incoming/d.part")   # .incoming is never synced: neither the temporary name nor its removal is durable
proc_link = f"/proc/self/fd/{unnamed(b'C' * 5000, True)}".encode()
check(libc.linkat(AT_FDCWD, proc_link, AT_FDCWD, b"series/c.dcm", AT_SYMLINK_FOLLOW))  # its directory is not synced
""")
    simulator.cut("strict")
    assert read_tree(simulator.root) == {
        ".incoming": None, "series": None, "series/a.dcm": b"A" * 5000, "series/b.dcm": b"",
        "series/d.dcm": b"D" * 5000,
    }


def test_strict_cut_of_renames(power_loss, tmp_path):
    write_tree_at(tmp_path / "root", {"config": b"v1", "plain": b"v1", "a/x": b"x", "b": None, "quiet/config": b"v1",
                                      "swap1": b"1", "swap2": b"2"})
    simulator = power_loss(tmp_path / "root")
    run_program(simulator, """
def replace(name, data, sync_data):
    fd = create(name + ".tmp")
    os.write(fd, data)
    if sync_data:
        os.fsync(fd)
    os.replace(name + ".tmp", name)

replace("config", b"v2", True)
replace("plain", b"v2", False)      # the replacement's bytes were never synced: an empty file after the cut
check(libc.renameat2(AT_FDCWD, b"swap1", AT_FDCWD, b"swap2", 2))
fsync_dir()
os.rename("a/x", "b/x")             # across directories: one synced directory makes the whole rename durable
fsync_dir("b")
replace("quiet/config", b"v2", True)  # quiet/ is never synced: the old file stays
""")
    simulator.cut("strict")
    assert read_tree(simulator.root) == {
        "config": b"v2", "plain": b"", "a": None, "b": None, "b/x": b"x", "quiet": None, "quiet/config": b"v1",
        "swap1": b"2", "swap2": b"1",
    }


def test_strict_cut_of_synchronous_writes_and_of_what_is_no_barrier(power_loss, tmp_path):
    write_tree_at(tmp_path / "root", {"ranged": b"old", "appended": b""})
    simulator = power_loss(tmp_path / "root")
    run_program(simulator, """
fd = create("dsync", os.O_DSYNC)
os.write(fd, b"durable on return")
rwf = create("rwf")
os.pwritev(rwf, [b"per-", b"write"], 0, os.RWF_DSYNC)
fsync_dir()
fd = os.open("ranged", os.O_WRONLY)
os.write(fd, b"new")
check(libc.sync_file_range(fd, 0, 0, 7))   # write-back, but no barrier: lost
fd = os.open("appended", os.O_WRONLY | os.O_APPEND)
for part in (b"one ", b"two ", b"three"):
    os.write(fd, part)
with open("appended", "ab") as stream:     # buffered io through FileIO: write() underneath
    stream.write(b" four")
os.fdatasync(fd)
""")
    simulator.cut("strict")
    assert read_tree(simulator.root) == {"dsync": b"durable on return", "rwf": b"per-write", "ranged": b"old",
                                         "appended": b"one two three four"}


SQLITE_PROGRAM = """
import sqlite3
connection = sqlite3.connect("db.sqlite", isolation_level=None)
connection.execute("PRAGMA journal_mode={journal}")
connection.execute("PRAGMA synchronous={synchronous}")
for number in range(1, 41):
    connection.execute("BEGIN")
    connection.execute("INSERT INTO t (id, body) VALUES (?, ?)", (number, os.urandom(300)))
    connection.execute("COMMIT")
os.kill(os.getpid(), signal.SIGKILL)   # the connection never closes: no checkpoint, the WAL stays
"""


def _sqlite_baseline(root: Path) -> None:
    root.mkdir()
    connection = sqlite3.connect(root / "db.sqlite")
    connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    connection.commit()
    connection.close()


def _committed_ids(root: Path) -> list[int]:
    connection = sqlite3.connect(root / "db.sqlite")
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return [row[0] for row in connection.execute("SELECT id FROM t ORDER BY id")]
    finally:
        connection.close()


@pytest.mark.parametrize(("journal", "synchronous", "surviving"), [
    ("wal", "FULL", 40),  # m3edge's setting: every commit fsyncs the WAL
    # SQLite's documented gap: in rollback-journal mode a commit is the journal's unlink, and only EXTRA syncs the
    # directory after it; with FULL the journal comes back after a power cut and rolls the last commit back.
    ("delete", "FULL", 39),
    ("delete", "EXTRA", 40),
])
def test_sqlite_commits_in_a_strict_cut(journal, synchronous, surviving, power_loss, tmp_path):
    _sqlite_baseline(tmp_path / "root")
    simulator = power_loss(tmp_path / "root")
    run_program(simulator, SQLITE_PROGRAM.format(journal=journal, synchronous=synchronous))
    report = simulator.cut("strict")
    assert _committed_ids(simulator.root) == list(range(1, surviving + 1))
    if journal == "wal":
        assert report.unmodelled == ("db.sqlite-shm",)  # its wal-index is written through mmap


def test_sqlite_loses_commits_in_a_strict_cut_without_syncs(power_loss, tmp_path):
    """The negative control: with synchronous=OFF nothing is synced, and the strict cut loses every commit (a kill -9
    alone would lose none)."""
    _sqlite_baseline(tmp_path / "root")
    simulator = power_loss(tmp_path / "root")
    run_program(simulator, SQLITE_PROGRAM.format(journal="wal", synchronous="OFF"))
    simulator.cut("strict")
    assert _committed_ids(simulator.root) == []


def test_random_cuts_of_sqlite_leave_a_prefix_of_its_commits(power_loss, tmp_path):
    """WAL recovery stops at the first missing frame: whatever subset the random model keeps, the database holds every
    synced commit (FULL) or a prefix of them (OFF), and passes its integrity check. (A WAL frame straddles two pages
    of the file: pages are kept with probability 0.9 so that longer prefixes occur.)"""
    for synchronous in ("FULL", "OFF"):
        _sqlite_baseline(tmp_path / synchronous)
        simulator = power_loss(tmp_path / synchronous)
        run_program(simulator, SQLITE_PROGRAM.format(journal="wal", synchronous=synchronous))
        counts = set()
        for seed, tree in enumerate(simulator.preview("random", seeds=range(12), keep_probability=0.9)):
            state = tmp_path / f"{synchronous}-{seed}"
            state.mkdir()
            write_tree_at(state, tree)
            ids = _committed_ids(state)
            assert ids == list(range(1, len(ids) + 1))
            counts.add(len(ids))
        if synchronous == "FULL":
            assert counts == {40}
        else:
            assert len(counts) > 1, "the random model never varied what survived"


def _pages(number: int) -> bytes:
    return bytes([2 * number + 1]) * PAGE + bytes([2 * number + 2]) * PAGE


def test_random_cuts_only_produce_states_the_model_allows(power_loss, tmp_path):
    simulator = power_loss(tmp_path / "root")
    run_program(simulator, """
for number in range(12):
    fd = create(f"f{number:02d}")
    os.write(fd, bytes([2 * number + 1]) * 4096 + bytes([2 * number + 2]) * 4096)
    if number % 2 == 0:
        os.fsync(fd)
    if number == 5:
        fsync_dir()
""")
    (strict,) = simulator.preview("strict")
    assert strict == {f"f{n:02d}": _pages(n) if n % 2 == 0 else b"" for n in range(6)}
    states = simulator.preview("random", seeds=range(40))
    kept_names = set()
    for state in states:
        names = sorted(state)
        kept_names.add(len(names))
        assert names == [f"f{n:02d}" for n in range(len(names))], "names survive in the order they were made"
        assert len(names) >= 6, "every name a sync covered survives"
        for n, name in enumerate(names):
            content = state[name]
            if n % 2 == 0:
                assert content == _pages(n), "synced bytes survive"
                continue
            assert len(content) in (0, PAGE, 2 * PAGE)
            for page in range(len(content) // PAGE):
                assert content[page * PAGE:(page + 1) * PAGE] in (_pages(n)[page * PAGE:(page + 1) * PAGE],
                                                                  bytes(PAGE)), "a page is written or a hole"
    assert len(kept_names) > 1, "the random model never varied which names survived"
    unsynced = [state.get("f01") for state in states]
    assert b"" in unsynced and _pages(0) != unsynced and any(page and page[:PAGE] != bytes(PAGE) for page in unsynced)


def test_the_cut_refuses_a_change_it_did_not_record(power_loss, tmp_path):
    write_tree_at(tmp_path / "root", {"f": b"old"})
    simulator = power_loss(tmp_path / "root")
    run_program(simulator, "fd = os.open('f', os.O_WRONLY); os.write(fd, b'new'); os.fsync(fd)")
    (simulator.root / "f").write_bytes(b"changed behind the recorder's back")
    with pytest.raises(RecordingMismatch, match="f: .*differ|f: .* bytes on disk"):
        simulator.cut("strict")


def test_the_cut_waits_for_every_recorded_process(power_loss, tmp_path):
    simulator = power_loss(tmp_path / "root")
    sleeper = subprocess.Popen([sys.executable, "-c", PRELUDE + "create('f'); sys.stdin.read()"],
                               cwd=simulator.root, env=simulator.env(), stdin=subprocess.PIPE)
    try:
        with pytest.raises(StillRecording, match=str(sleeper.pid)):
            simulator.cut("strict", wait=0.2)
    finally:
        sleeper.kill()
        sleeper.wait()
    simulator.cut("strict")
    assert read_tree(simulator.root) == {}


def test_a_change_in_flight_at_the_kill_is_dropped_not_refused(power_loss, tmp_path):
    """SIGKILL between the kernel's write and its record: the intent says it was in flight; the check tolerates the
    unexplained bytes there, and the cut drops the write (it was not synced)."""
    write_tree_at(tmp_path / "root", {"f": b"old"})
    simulator = power_loss(tmp_path / "root")
    run_program(simulator, "fd = os.open('f', os.O_WRONLY); os.write(fd, b'synced'); os.fsync(fd)\n"
                           "os.write(fd, b'-and-then-some')")
    (log,) = simulator.log_dir.glob("*.log")
    with log.open("r+b") as handle:  # the last record is the final write's: cut it short
        handle.truncate(log.stat().st_size - 5)
    journal = read_journal(simulator.log_dir)
    assert journal.torn == 1 and len(journal.in_flight) == 1
    report = simulator.cut("strict")
    assert read_tree(simulator.root) == {"f": b"synced"}
    assert (report.in_flight, report.torn_records) == (1, 1)


def test_crash_points_walk_the_strict_states_in_order(power_loss, tmp_path):
    simulator = power_loss(tmp_path / "root")
    run_program(simulator, """
for name in ("a", "b"):
    fd = create(name)
    os.write(fd, name.upper().encode())
    os.fsync(fd)     # its bytes: durable, its name not yet
    fsync_dir()      # its name
""")
    points = simulator.crash_points()
    assert len(points) == 4
    assert simulator.preview("strict", at=points) == [{}, {"a": b"A"}, {"a": b"A"}, {"a": b"A", "b": b"B"}]
    assert simulator.preview("live", at=[points[0]]) == [{"a": b"A"}]
