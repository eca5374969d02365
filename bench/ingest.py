"""Ingest benchmark: the same CT corpus sent with dcmtk's storescu to m3edge's SCP, dcmtk's storescp and Orthanc.

``python -m bench.ingest`` generates CT-like instances (512 x 512, 16-bit, realistic geometry; about 0.5 MB each) once
into a cache folder, then, one target after the other in the same run, starts the target on free ports with its own
storage, sends the whole corpus with ``--senders`` parallel storescu processes (the same for every target; dcmtk and
Orthanc run with TCP_NODELAY=1), stops it and prints MB/s and instances/s with the ratios m3edge/Orthanc and
m3edge/storescp.

- m3edge: ``m3edge scp`` with its embedded SQLite database, durability on (fsync of each file and its directory, the
  database row committed before each success status); the count of recorded instances is checked afterwards.
- storescp: ``storescp --fork`` writing plain files (no fsync): the ceiling to report.
- Orthanc: SQLite index, ``SyncStorageArea`` on (it fsyncs too), no compression.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SLICE_BYTES = 512 * 512 * 2
SLICES_PER_SERIES = 250
TARGETS = ("m3edge", "storescp", "orthanc")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout:g} s")
        time.sleep(0.1)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def corpus(cache: Path, size_mb: float, rows: int = 512) -> list[Path]:
    """The cached corpus of at least ``size_mb`` MB (generated on first use, several CT series/studies)."""
    from tests.support.dicom_corpus import write_ct_series

    count = max(1, math.ceil(size_mb * 1e6 / (rows * rows * 2)))
    folder = cache / f"ct-{rows}-{count}"
    done = folder / "COMPLETE"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        started = time.monotonic()
        for index, start in enumerate(range(0, count, SLICES_PER_SERIES)):
            slices = min(SLICES_PER_SERIES, count - start)
            write_ct_series(folder / f"study{index:03d}", slices, rows=rows, columns=rows, seed=index)
        done.write_text(str(count))
        print(f"generated {count} instances in {time.monotonic() - started:.1f} s into {folder}", flush=True)
    return sorted(p for p in folder.rglob("*.dcm"))


@dataclass
class Measurement:
    target: str
    seconds: float
    instances: int
    total_bytes: int

    @property
    def mb_per_s(self) -> float:
        return self.total_bytes / 1e6 / self.seconds

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds


def send(port: int, files: list[Path], senders: int, called_ae: str) -> float:
    """Send ``files`` with ``senders`` parallel storescu processes; return the wall time. Raises if any fails."""
    groups = [files[i::senders] for i in range(senders)] if senders > 1 else [files]
    groups = [sorted(g) for g in groups if g]
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            ["storescu", "-aet", "BENCH", "-aec", called_ae, "127.0.0.1", str(port), *map(str, group)],
            env=_dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for group in groups
    ]
    failures = []
    for process in processes:
        _, err = process.communicate(timeout=3600)
        if process.returncode != 0:
            failures.append(err.decode(errors="replace")[-500:])
    elapsed = time.monotonic() - started
    if failures:
        raise RuntimeError(f"storescu failed: {failures[0]}")
    return elapsed


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def run_m3edge(files: list[Path], work: Path, senders: int, receivers: int) -> float:
    home = work / "m3edge"
    port = _free_port()
    env = {
        **os.environ, "M3EDGE_HOME": str(home), "M3EDGE_DICOM_PORT": str(port), "M3EDGE_DICOM_HOST": "127.0.0.1",
        "M3EDGE_SPOOL_RESERVE_BYTES": "0", "M3EDGE_LOG_LEVEL": "WARNING", "M3EDGE_DICOM_RECEIVERS": str(receivers),
        "M3EDGE_DICOM_MAX_ASSOCIATIONS": str(max(16, senders * 2)), "M3EDGE_STUDY_IDLE_SECONDS": "3600",
    }
    env.pop("M3EDGE_DATABASE_URL", None)  # the embedded default: SQLite in HOME
    home.mkdir(parents=True)
    log = (home / "scp.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", "from service.cli.main import main; main(['scp', '--no-assemble'])"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        _wait(lambda: _port_open(port) or process.poll() is not None, 120, "m3edge scp did not listen")
        if process.poll() is not None:
            raise RuntimeError(f"m3edge scp exited: {(home / 'scp.log').read_text()[-2000:]}")
        elapsed = send(port, files, senders, "M3EDGE")
    finally:
        _stop(process)
        log.close()
    with sqlite3.connect(home / "m3edge.db") as db:
        recorded = db.execute("SELECT count(*) FROM instances").fetchone()[0]
    if recorded != len(files):
        raise RuntimeError(f"m3edge recorded {recorded} of {len(files)} instances")
    return elapsed


def run_storescp(files: list[Path], work: Path, senders: int) -> float:
    out = work / "storescp"
    out.mkdir(parents=True)
    port = _free_port()
    process = subprocess.Popen(
        ["storescp", "--fork", "-od", str(out), "-aet", "STORESCP", str(port)], env=_dcmtk_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait(lambda: _port_open(port), 60, "storescp did not listen")
        return send(port, files, senders, "STORESCP")
    finally:
        _stop(process)


def run_orthanc(files: list[Path], work: Path, senders: int) -> float:
    folder = work / "orthanc"
    folder.mkdir(parents=True)
    dicom_port, http_port = _free_port(), _free_port()
    config = {
        "Name": "bench", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "storage"),
        "StorageCompression": False, "Plugins": [], "HttpServerEnabled": True, "HttpPort": http_port,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomServerEnabled": True,
        "DicomAet": "ORTHANC", "DicomPort": dicom_port, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True, "DicomThreadsCount": max(4, senders), "SyncStorageArea": True,
        "SaveJobs": False, "StableAge": 3600,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("wb")
    executable = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    process = subprocess.Popen([executable, str(folder / "orthanc.json")], env=_dcmtk_env(), stdout=log,
                               stderr=subprocess.STDOUT, cwd=folder)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {(folder / 'orthanc.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/system", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    try:
        _wait(ready, 120, "Orthanc did not answer")
        elapsed = send(dicom_port, files, senders, "ORTHANC")
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/statistics", timeout=30) as answer:
            stored = json.load(answer)["CountInstances"]
        if stored != len(files):
            raise RuntimeError(f"Orthanc stored {stored} of {len(files)} instances")
        return elapsed
    finally:
        _stop(process)
        log.close()


def main(argv: list[str] | None = None) -> list[Measurement]:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=320, help="corpus size in MB (at least 300 for the report)")
    parser.add_argument("--rows", type=int, default=512, help="rows = columns of each slice (512 for the report)")
    parser.add_argument("--senders", type=int, default=4, help="parallel storescu processes, the same for every target")
    parser.add_argument("--receivers", type=int, default=1, help="m3edge receiving processes (DICOM_RECEIVERS)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of " + ",".join(TARGETS))
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "m3edge-bench-corpus")
    parser.add_argument("--workdir", type=Path, default=None, help="where targets store (a temporary folder by default)")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target(s) {', '.join(sorted(unknown))}")

    files = corpus(args.cache, args.size_mb, args.rows)
    total = sum(p.stat().st_size for p in files)
    print(f"corpus: {len(files)} instances, {total / 1e6:.1f} MB; {args.senders} parallel storescu; "
          f"m3edge receivers: {args.receivers}", flush=True)
    results: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="m3edge-bench-", dir=args.workdir) as tmp:
        for target in targets:
            work = Path(tmp) / target
            if target == "m3edge":
                seconds = run_m3edge(files, work, args.senders, args.receivers)
            elif target == "storescp":
                seconds = run_storescp(files, work, args.senders)
            else:
                seconds = run_orthanc(files, work, args.senders)
            shutil.rmtree(work, ignore_errors=True)
            result = Measurement(target, seconds, len(files), total)
            results.append(result)
            print(f"{target:>9}: {result.mb_per_s:8.1f} MB/s  {result.instances_per_s:8.1f} instances/s  "
                  f"({seconds:.2f} s)", flush=True)
    by_name = {r.target: r for r in results}
    if "m3edge" in by_name:
        for peer in ("orthanc", "storescp"):
            if peer in by_name:
                print(f"m3edge/{peer}: {by_name['m3edge'].mb_per_s / by_name[peer].mb_per_s:.2f}")
    return results


if __name__ == "__main__":
    main()
