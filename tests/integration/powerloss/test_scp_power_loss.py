"""The node's promise under power loss, not just kill -9: ``m3edge scp`` (SQLite in HOME) receives CT series from
storescu, over one association or several at once; at a random moment the node and its receiving processes are
killed and HOME is cut to what a disk could hold after a power failure (the strict model: only what a sync covered);
the node restarts on that. Every instance storescu saw acknowledged must then be present byte for byte and recorded
once, every recorded instance and every file under an instance's name must be a complete copy of what was sent (no
torn file, nothing half-received recorded), and after the last restart every study that got an acknowledgement
completes.

``M3EDGE_POWERLOSS_CYCLES`` sets the number of power cuts per test (CI runs a few; run 50 by hand);
``M3EDGE_POWERLOSS_MODEL=random`` cuts with the randomised model instead (each cycle its own seed).

A second test cuts one recorded transfer at every crash point (after each sync the node completed) instead of one
random kill: at none of them may the database record an instance whose file is not complete in the spool. It found
the gap ``RECORD_BEFORE_NAME`` of the receive path before the journal (a row committed before the directory fsync
that makes its file's name durable); the journal's background step commits rows only after one ``syncfs`` made
their files and names durable (``dicom_node.intake.journal``), and the test passes. Should a random kill of the
first tests ever land in such a gap again, they finish every other check and then end as an expected failure naming
it; a lost acknowledged instance always fails them.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.support.dcmtk import StorescuResult, dcmtk_env, storescu, storescu_command
from tests.support.dicom_corpus import dataset_bytes, write_ct_series
from tests.support.polling import wait_for
from tests.support.powerloss import CutModel
from tests.support.powerloss.node import PowerLossNode

pytestmark = pytest.mark.slow

SLICES = 24  # per series, 256 x 256: about 130 kB an instance
RECORD_BEFORE_NAME = (
    "a recorded instance without its file after a power cut: the row was made durable before the file's name "
    "(the gap of the receive path before the journal, whose SpoolAndRecorder started the commit from "
    "SpoolWriter.publish's on_linked, before the directory fsync); the journal commits rows only after syncfs"
)
NODE_ENV = {"M3EDGE_STUDY_IDLE_SECONDS": "2", "M3EDGE_STUDY_RELEASE_GRACE_SECONDS": "1"}


def _cycles(default: int) -> int:
    return int(os.environ.get("M3EDGE_POWERLOSS_CYCLES", default))


def _model() -> CutModel:
    return CutModel(os.environ.get("M3EDGE_POWERLOSS_MODEL", "strict"))


@dataclass
class Ledger:
    """What was sent and what the sender saw acknowledged, across cycles."""

    sent: dict[str, bytes] = field(default_factory=dict)  # SOP Instance UID -> the data set storescu sent
    acknowledged: set[str] = field(default_factory=set)
    studies: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> Study Instance UID
    uid_of: dict[Path, str] = field(default_factory=dict)
    phantoms: set[str] = field(default_factory=set)  # recorded, never acknowledged, file missing (RECORD_BEFORE_NAME)

    def add_series(self, paths: list[Path]) -> None:
        for path in paths:
            ds = dcmread(path, stop_before_pixels=True)
            self.uid_of[path] = ds.SOPInstanceUID
            self.studies[ds.SOPInstanceUID] = ds.StudyInstanceUID
            self.sent[ds.SOPInstanceUID] = dataset_bytes(path)


def _acknowledged(outputs: list[Path]) -> set[Path]:
    found = set()
    for output in outputs:
        result = StorescuResult(0, output.read_text(errors="replace") if output.exists() else "")
        found |= {path for path, status in result.responses().items() if status == "Success"}
    return found


def _check_after_restart(node: PowerLossNode, ledger: Ledger) -> int:
    """The promise, on the node as restarted on the cut HOME; returns how many recorded instances storescu never saw
    acknowledged (a commit whose response the kill cut off: allowed). A recorded, unacknowledged instance without its
    file is the known gap RECORD_BEFORE_NAME: noted in ``ledger.phantoms``."""
    rows = node.query("SELECT sop_instance_uid, path, size_bytes, conflict FROM instances")
    recorded: dict[str, list] = {}
    for sop, path, size, conflict in rows:
        recorded.setdefault(sop, []).append((path, size, conflict))
    lost = sorted(ledger.acknowledged - set(recorded))
    assert not lost, f"{len(lost)} acknowledged instance(s) missing after the power cut, e.g. {lost[:3]}"
    for sop, copies in recorded.items():
        assert len(copies) == 1, f"{sop} recorded {len(copies)} times"
        path, size, conflict = copies[0]
        assert not conflict, f"{sop}: recorded as a conflicting copy"
        stored = node.spool / path
        if not stored.exists() and sop not in ledger.acknowledged:
            ledger.phantoms.add(sop)
            continue
        assert stored.stat().st_size == size, f"{path}: {stored.stat().st_size} bytes, recorded {size}"
        assert dataset_bytes(stored) == ledger.sent[sop], f"{path}: not the data set that was sent"
    for stored in node.spool.rglob("*.dcm"):  # recorded or not: no torn file under an instance's name
        relative = stored.relative_to(node.spool)
        if relative.parts[0] == ".incoming":
            continue
        sop = relative.name.removesuffix(".dcm")
        assert sop in ledger.sent, f"{relative}: a name for no instance that was sent"
        assert stored.stat().st_size > 0 and dataset_bytes(stored) == ledger.sent[sop], f"{relative} is torn"
    return len(set(recorded) - ledger.acknowledged)


def _run_cycles(tmp_path: Path, shim: Path, *, associations: int, receivers: int, cycles: int, seed: int,
                ) -> PowerLossNode:
    rng = random.Random(seed)
    ledger = Ledger()
    env = {**NODE_ENV, "M3EDGE_DICOM_RECEIVERS": str(receivers)}
    node = PowerLossNode(tmp_path / "home", tmp_path / "powerloss", shim, env=env).start()
    try:
        for cycle in range(cycles):
            study_uid = f"1.2.826.0.1.3680043.10.1338.{seed}.{cycle + 1}"
            series = [write_ct_series(tmp_path / f"cycle{cycle}" / f"series{n}", SLICES, rows=256, columns=256,
                                      seed=1000 * cycle + n, study_uid=study_uid, series_number=n + 1)
                      for n in range(associations)]
            for one in series:
                ledger.add_series(one.paths)
            outputs = [tmp_path / f"cycle{cycle}" / f"storescu{n}.out" for n in range(associations)]
            senders = []
            for one, output in zip(series, outputs):
                with output.open("w") as sink:
                    senders.append(subprocess.Popen(storescu_command(node.port, one.paths), env=dcmtk_env(),
                                                    stdout=sink, stderr=subprocess.STDOUT))
            total = SLICES * associations
            kill_after = rng.randint(1, total - 2)
            wait_for(lambda: len(_acknowledged(outputs)) >= kill_after or all(s.poll() is not None for s in senders),
                     timeout=120, interval=0.01, message="storescu stopped getting responses")
            report = node.power_cut(_model(), seed=rng.randrange(1 << 30))
            for sender in senders:
                sender.wait(timeout=60)
            acknowledged = _acknowledged(outputs)
            assert len(acknowledged) < total, "the power cut came after the whole transfer"
            ledger.acknowledged |= {ledger.uid_of[path] for path in acknowledged}
            node.start()
            unacknowledged = _check_after_restart(node, ledger)
            print(f"cycle {cycle}: {len(acknowledged)}/{total} acknowledged, {unacknowledged} recorded without an "
                  f"acknowledgement; {report.describe()}; lost {report.lost}, brought back {report.added}, "
                  f"changed {report.changed}")
        studies = {ledger.studies[sop] for sop in ledger.acknowledged}

        def completed() -> bool:
            rows = node.query("SELECT study_uid FROM studies WHERE completed_at IS NOT NULL AND status != 'receiving'")
            return studies <= {row[0] for row in rows}

        wait_for(completed, timeout=60, interval=0.5, message="a study with acknowledged instances never completed")
    finally:
        node.stop()
    if ledger.phantoms:
        pytest.xfail(f"{len(ledger.phantoms)} recorded instance(s) without a file after a cut: {RECORD_BEFORE_NAME}")
    return node


def _time_limit(cycles: int) -> pytest.MarkDecorator:
    """pytest-timeout's limit for a run of ``cycles`` power cuts (a cycle takes 5 to 20 s here)."""
    return pytest.mark.timeout(max(300, 60 * cycles))


@_time_limit(_cycles(3))
def test_acknowledged_instances_survive_power_cuts_over_one_association(powerloss_shim, tmp_path):
    """One receiving process (the node receives in its own process)."""
    _run_cycles(tmp_path, powerloss_shim, associations=1, receivers=1, cycles=_cycles(3), seed=17)


@_time_limit(_cycles(2))
def test_acknowledged_instances_survive_power_cuts_over_several_associations(powerloss_shim, tmp_path):
    """Three associations at once into two receiving processes, each writing the spool and SQLite itself."""
    _run_cycles(tmp_path, powerloss_shim, associations=3, receivers=2, cycles=_cycles(2), seed=29)


def _recorded_in(tree: dict[str, bytes | None], scratch: Path) -> list[tuple[str, str]]:
    """(SOP Instance UID, spool path) of every instance the database in ``tree`` records."""
    scratch.mkdir(parents=True)
    for name in ("m3edge.db", "m3edge.db-wal", "m3edge.db-journal"):
        if tree.get(name):
            (scratch / name).write_bytes(tree[name])
    connection = sqlite3.connect(scratch / "m3edge.db")
    try:
        if not connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'instances'").fetchall():
            return []  # a moment before the migrations were durable
        return connection.execute("SELECT sop_instance_uid, path FROM instances").fetchall()
    finally:
        connection.close()


def test_no_crash_point_leaves_a_recorded_instance_without_its_file(powerloss_shim, tmp_path):
    """One association of 8 instances, all acknowledged; then a strict cut at every moment a sync completed: every
    instance the database records at that moment has its complete file in the spool. Directory syncs are made slow
    (20 ms, as on a busy disk) so the outcome does not hang on which of two concurrent syncs happens to finish
    first."""
    series = write_ct_series(tmp_path / "ct", 8, rows=256, columns=256, seed=5)
    node = PowerLossNode(tmp_path / "home", tmp_path / "powerloss", powerloss_shim,
                         env={**NODE_ENV, "M3EDGE_DICOM_RECEIVERS": "1"}, slow_directory_sync_ms=20).start()
    try:
        result = storescu(node.port, series.paths)
        assert list(result.responses().values()) == ["Success"] * 8, result.output[-2000:]
        # Acknowledged means journaled; the files and rows follow in the background: record the moments they land.
        wait_for(lambda: node.query("SELECT count(*) FROM instances") == [[8]], timeout=60, interval=0.2,
                 message="the journaled instances were never recorded")
    finally:
        node.kill()
    points = node.simulator.crash_points()
    trees = node.simulator.preview("strict", at=points, only=lambda path: not path.endswith("-shm"))
    records_seen, missing = 0, []
    for number, tree in enumerate(trees):
        for sop, path in _recorded_in(tree, tmp_path / f"point{number}"):
            records_seen += 1
            if tree.get(f"spool/{path}") != (node.spool / path).read_bytes():
                missing.append((number, sop))
    assert records_seen, "no crash point had a recorded instance: nothing was checked"
    assert not missing, (f"{len(missing)} of {records_seen} recorded instances at {len(points)} crash points lack "
                         f"their complete file, e.g. {missing[:3]}")
