"""The journal's promise under kill -9, many times: several associations send small CT series at once, the node is
killed with SIGKILL at a random moment, started again on the same HOME (its start replays the journal), and then:

- every instance storescu saw acknowledged is recorded exactly once, in its study, and its file is byte for byte the
  data set that was sent;
- every recorded instance is a complete copy of an instance that was sent (nothing torn or half-received recorded);
- no file under an instance's name in the spool is torn, acknowledged or not;
- a re-send of instances already recorded (one association re-sends the previous cycle's first series) adds no row.

``M3EDGE_KILL_CYCLES`` sets the number of kills (default 50); instances are 32 x 32 so that a cycle costs well under
a second. The node runs in a child forked from a helper that imported everything once (``killable_node``), so a
restart costs milliseconds, not an interpreter start.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.support.dcmtk import StorescuResult, dcmtk_env, storescu_command
from tests.support.dicom_corpus import dataset_bytes, write_ct_series
from tests.support.ports import free_port

pytestmark = pytest.mark.slow

ASSOCIATIONS = 3
SLICES = 8
REPO = Path(__file__).resolve().parents[2]


class Helper:
    """The forking helper (``tests.support.killable_node``) and the node it runs now."""

    def __init__(self, home: Path, port: int) -> None:
        self.home, self.port = home, port
        self.process = subprocess.Popen([sys.executable, "-m", "tests.support.killable_node", str(home), str(port)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        self.pid = 0

    def start(self) -> None:
        self.process.stdin.write("start\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        assert answer.isdigit(), f"the node did not start: {answer!r}"
        self.pid = int(answer)

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _acknowledged(output: Path) -> set[Path]:
    result = StorescuResult(0, output.read_text(errors="replace") if output.exists() else "")
    return {path for path, status in result.responses().items() if status == "Success"}


def test_kill_9_at_random_moments_of_several_associations(tmp_path):
    cycles = int(os.environ.get("M3EDGE_KILL_CYCLES", "50"))
    rng = random.Random(1717)
    home = tmp_path / "home"
    helper = Helper(home, free_port())
    sent: dict[str, bytes] = {}  # SOP Instance UID -> data set as sent
    study_of: dict[str, str] = {}
    acknowledged: set[str] = set()
    mid_transfer = 0
    previous_first: list[Path] = []
    try:
        helper.start()
        for cycle in range(cycles):
            study_uid = f"1.2.826.0.1.3680043.10.1717.{cycle + 1}"
            series = []
            for n in range(ASSOCIATIONS):
                one = write_ct_series(tmp_path / f"c{cycle}" / f"s{n}", SLICES, rows=32, columns=32,
                                      seed=cycle * 10 + n, study_uid=study_uid, series_number=n + 1)
                for path in one.paths:
                    ds = dcmread(path, stop_before_pixels=True)
                    sent[ds.SOPInstanceUID] = dataset_bytes(path)
                    study_of[ds.SOPInstanceUID] = ds.StudyInstanceUID
                series.append(one.paths)
            batches = series + ([previous_first] if previous_first else [])
            studies = {study_uid} | ({study_of[sop_of(previous_first[0])]} if previous_first else set())
            previous_first = series[0]
            outputs = [tmp_path / f"c{cycle}" / f"out{n}" for n in range(len(batches))]
            senders = []
            for paths, output in zip(batches, outputs):
                with output.open("w") as sink:
                    senders.append(subprocess.Popen(storescu_command(helper.port, paths), env=dcmtk_env(),
                                                    stdout=sink, stderr=subprocess.STDOUT))
            total = sum(len(b) for b in batches)
            kill_after = rng.randint(0, total - 1)  # acknowledgements seen before the kill (0: during the first)
            deadline = time.monotonic() + 60
            while (sum(len(_acknowledged(o)) for o in outputs) < kill_after
                   and any(s.poll() is None for s in senders) and time.monotonic() < deadline):
                time.sleep(0.002)
            helper.kill9()
            for sender in senders:
                sender.wait(timeout=60)
            got = set().union(*(_acknowledged(o) for o in outputs))
            uids = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in got}
            acknowledged |= uids
            mid_transfer += 0 < len(got) < total
            helper.start()  # replays the journal before it listens
            _check(home, sent, study_of, acknowledged, studies)
            print(f"cycle {cycle}: {len(got)}/{total} acknowledged before the kill")
        assert mid_transfer >= cycles // 4, f"only {mid_transfer} of {cycles} kills landed mid-transfer"
    finally:
        try:
            helper.kill9()
        except (ProcessLookupError, OSError):
            pass
        helper.close()


def sop_of(path: Path) -> str:
    return dcmread(path, stop_before_pixels=True).SOPInstanceUID


def _check(home: Path, sent: dict[str, bytes], study_of: dict[str, str], acknowledged: set[str],
           studies: set[str]) -> None:
    """Every row and every acknowledgement, all cycles; the files of ``studies`` (this cycle's and the re-sent one's:
    no other study's files were written since they were last checked)."""
    spool = home / "spool"
    with sqlite3.connect(home / "m3edge.db") as db:
        rows = db.execute(
            "SELECT i.sop_instance_uid, i.path, i.size_bytes, s.study_uid FROM instances i "
            "JOIN series se ON i.series_id = se.id JOIN studies s ON se.study_id = s.id").fetchall()
    recorded: dict[str, list[tuple[str, int, str]]] = {}
    for sop, path, size, study in rows:
        recorded.setdefault(sop, []).append((path, size, study))
    lost = sorted(acknowledged - recorded.keys())
    assert not lost, f"{len(lost)} acknowledged instance(s) not recorded after the restart, e.g. {lost[:3]}"
    for sop, copies in recorded.items():
        assert len(copies) == 1, f"{sop} recorded {len(copies)} times"
        path, size, study = copies[0]
        assert sop in sent, f"{sop}: recorded, never sent"
        assert study == study_of[sop], f"{sop}: recorded in study {study}, sent in {study_of[sop]}"
        if study not in studies:
            continue
        stored = spool / path
        assert stored.is_file(), f"{sop}: recorded, no file at {path}"
        assert stored.stat().st_size == size and dataset_bytes(stored) == sent[sop], f"{path}: not what was sent"
    for stored in (file for study in studies for file in (spool / study).rglob("*.dcm")):
        relative = stored.relative_to(spool)
        sop = relative.name.removesuffix(".dcm")
        assert sop in sent and dataset_bytes(stored) == sent[sop], f"{relative} is torn or not an instance sent"
