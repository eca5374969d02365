"""Ingest benchmark: the same CT corpus sent with dcmtk's storescu to m3edge's SCP, dcmtk's storescp and Orthanc.

``python -m bench.ingest`` generates CT-like instances (512 x 512, 16-bit, realistic geometry; about 0.5 MB each) once
into a cache folder, then, one target after the other in the same run, starts the target on free ports with its own
storage, sends the whole corpus with N parallel storescu processes for each N of ``--senders`` (default 1 and 8:
one association, as a PACS sends a study, and 8 concurrent senders; the same for every target; dcmtk and Orthanc run
with TCP_NODELAY=1), times ``--latency-samples`` one-instance associations, stops it and prints MB/s and instances/s,
the median and range over the rounds, and the ratios m3edge/Orthanc and m3edge/storescp (each round's ratio, then
their median and range), throughput and one-instance association latency.

- m3edge: ``m3edge scp`` with its embedded SQLite database and ``--receivers`` receiving processes (by default the
  node's own: one per CPU core, at most 4), durability on: each instance's bytes and record appended to its
  process's journal and fdatasync'ed (one sync shared by the instances waiting at that moment) before its success
  status; files, names (syncfs) and rows (SQLite WAL, synchronous=FULL) filed in the background. The bench waits
  until every instance has its row and prints how long that took after the last response.
- m3edge-fast: the same with ``DICOM_FAST_PATH=true`` (``dicom_node.scp.fastpath``; the node's default is off):
  ``--fast-path on,off`` measures both in the same rounds and prints the on/off ratio, the comparison that decides
  whether the fast path is worth its reach into pynetdicom.
- storescp: ``storescp --fork`` writing plain files (no fsync): the ceiling to report.
- Orthanc: SQLite index, ``SyncStorageArea`` true, no compression. Traced with strace (Orthanc 1.10.1), that means one
  fdatasync of each stored file, written in place under its final name; no fsync of its directories; and index
  commits that are not synced (SQLite WAL with synchronous=NORMAL: the WAL is synced at checkpoints only). Its
  success status therefore promises less than m3edge's; the comparison gives Orthanc that advantage.

``--runs`` repeats the whole comparison (the order of the targets rotates each round, the machine may be shared and
noisy); each round is printed, then the medians and the ratios. The configuration of each
target and the share of idle CPU during each transfer are printed too.
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

from service.config import default_receivers

SLICE_BYTES = 512 * 512 * 2
SLICES_PER_SERIES = 250
TARGETS = ("m3edge", "storescp", "orthanc")
DEFAULT_TARGETS = TARGETS
FAST_PATH_ON = "m3edge-fast"  # the m3edge target with DICOM_FAST_PATH=true (``--fast-path on`` or ``on,off``)


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


@dataclass(frozen=True)
class Transfer:
    seconds: float
    idle: float | None  # share of the machine's CPU time left idle during the transfer (None off Linux)
    latency: float | None = None  # median seconds of one-instance associations after the transfer
    filed: float | None = None  # m3edge: seconds from the transfer's end until every instance had its row


def send(port: int, files: list[Path], senders: int, called_ae: str) -> Transfer:
    """Send ``files`` with ``senders`` parallel storescu processes; return the wall time. Raises if any fails."""
    groups = [files[i::senders] for i in range(senders)] if senders > 1 else [files]
    groups = [sorted(g) for g in groups if g]
    counters = _cpu_counters()
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
    idle = idle_share(counters, _cpu_counters())
    if failures:
        raise RuntimeError(f"storescu failed: {failures[0]}")
    return Transfer(elapsed, idle)


def association_latency(port: int, file: Path, called_ae: str, samples: int) -> list[float]:
    """Seconds of ``samples`` one-instance associations (storescu: connect, associate, C-STORE, release), one after
    the other; the storescu process start is included, the same for every target."""
    times = []
    for _ in range(samples):
        started = time.monotonic()
        completed = subprocess.run(["storescu", "-aet", "BENCH", "-aec", called_ae, "127.0.0.1", str(port), str(file)],
                                   env=_dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
        times.append(time.monotonic() - started)
        if completed.returncode != 0:
            raise RuntimeError(f"storescu failed: {completed.stderr.decode(errors='replace')[-500:]}")
    return times


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _cpu_counters() -> tuple[int, int] | None:
    """(idle + iowait, total) jiffies of the whole machine, or None where /proc/stat is missing."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return values[3] + values[4], sum(values)


def idle_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def describe_targets(senders: int, receivers: int) -> dict[str, str]:
    """What each target runs with (printed before the measurements)."""
    return {
        "m3edge": f"m3edge scp, DICOM_RECEIVERS={receivers}, DICOM_MAX_ASSOCIATIONS={max(16, senders * 2)}, "
                  f"DICOM_MAX_PDU_SIZE=default, SQLite (WAL, synchronous=FULL); per instance before its status: "
                  f"its bytes and record appended to the process's journal and one fdatasync shared by every "
                  f"instance waiting then; file, name (syncfs) and row filed in the background",
        FAST_PATH_ON: "the same with DICOM_FAST_PATH=true (dicom_node/scp/fastpath.py)",
        "storescp": "storescp --fork, plain files, no fsync (the ceiling)",
        "orthanc": f"Orthanc, SyncStorageArea=true (fdatasync of each file; no directory fsync; SQLite index "
                   f"synchronous=NORMAL), StorageCompression=false, DicomThreadsCount={max(4, senders)}",
    }


def _recorded(database: Path) -> int:
    try:
        with sqlite3.connect(database, timeout=5) as db:
            return db.execute("SELECT count(*) FROM instances").fetchone()[0]
    except sqlite3.Error:
        return -1


def run_m3edge(files: list[Path], work: Path, senders: int, receivers: int, latency_samples: int = 0, *,
               fast_path: bool = False) -> Transfer:
    home = work / "m3edge"
    port = _free_port()
    env = {
        **os.environ, "M3EDGE_HOME": str(home), "M3EDGE_DICOM_PORT": str(port), "M3EDGE_DICOM_HOST": "127.0.0.1",
        "M3EDGE_SPOOL_RESERVE_BYTES": "0", "M3EDGE_LOG_LEVEL": "INFO", "M3EDGE_DICOM_RECEIVERS": str(receivers),
        "M3EDGE_DICOM_MAX_ASSOCIATIONS": str(max(16, senders * 2)), "M3EDGE_STUDY_IDLE_SECONDS": "3600",
        "M3EDGE_DICOM_FAST_PATH": "true" if fast_path else "false",
    }
    env.pop("M3EDGE_DATABASE_URL", None)  # the embedded default: SQLite in HOME
    home.mkdir(parents=True)
    log_path = home / "scp.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", "from service.cli.main import main; main(['scp', '--no-assemble'])"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        # The port opens with the first receiving process; the node logs "listening" once all of them are ready.
        _wait(lambda: b" listening on " in log_path.read_bytes() or process.poll() is not None, 120,
              "m3edge scp did not listen")
        if process.poll() is not None:
            raise RuntimeError(f"m3edge scp exited: {(home / 'scp.log').read_text()[-2000:]}")
        transfer = send(port, files, senders, "M3EDGE")
        ended = time.monotonic()
        _wait(lambda: _recorded(home / "m3edge.db") >= len(files), 600, "m3edge did not record every instance")
        filed = time.monotonic() - ended
        latency = (_median(association_latency(port, files[0], "M3EDGE", latency_samples))
                   if latency_samples else None)
        transfer = Transfer(transfer.seconds, transfer.idle, latency, filed)
    finally:
        _stop(process)
        log.close()
    with sqlite3.connect(home / "m3edge.db") as db:
        recorded = db.execute("SELECT count(*) FROM instances").fetchone()[0]
    if recorded != len(files):  # the latency samples re-send files[0]: a duplicate, no new row
        raise RuntimeError(f"m3edge recorded {recorded} of {len(files)} instances")
    return transfer


def run_storescp(files: list[Path], work: Path, senders: int, latency_samples: int = 0) -> Transfer:
    out = work / "storescp"
    out.mkdir(parents=True)
    port = _free_port()
    process = subprocess.Popen(
        ["storescp", "--fork", "-od", str(out), "-aet", "STORESCP", str(port)], env=_dcmtk_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait(lambda: _port_open(port), 60, "storescp did not listen")
        transfer = send(port, files, senders, "STORESCP")
        latency = (_median(association_latency(port, files[0], "STORESCP", latency_samples))
                   if latency_samples else None)
        return Transfer(transfer.seconds, transfer.idle, latency)
    finally:
        _stop(process)


def run_orthanc(files: list[Path], work: Path, senders: int, latency_samples: int = 0) -> Transfer:
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
        transfer = send(dicom_port, files, senders, "ORTHANC")
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/statistics", timeout=30) as answer:
            stored = json.load(answer)["CountInstances"]
        if stored != len(files):
            raise RuntimeError(f"Orthanc stored {stored} of {len(files)} instances")
        latency = (_median(association_latency(dicom_port, files[0], "ORTHANC", latency_samples))
                   if latency_samples else None)
        return Transfer(transfer.seconds, transfer.idle, latency)
    finally:
        _stop(process)
        log.close()


def _run_target(target: str, files: list[Path], work: Path, senders: int, receivers: int,
                latency_samples: int = 0) -> Transfer:
    if target in ("m3edge", FAST_PATH_ON):
        return run_m3edge(files, work, senders, receivers, latency_samples, fast_path=target == FAST_PATH_ON)
    if target == "storescp":
        return run_storescp(files, work, senders, latency_samples)
    return run_orthanc(files, work, senders, latency_samples)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def main(argv: list[str] | None = None) -> dict[int, list[Measurement]]:
    """Run the comparison for each sender count; return each target's median measurement per sender count."""
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=320, help="corpus size in MB (at least 300 for the report)")
    parser.add_argument("--rows", type=int, default=512, help="rows = columns of each slice (512 for the report)")
    parser.add_argument("--senders", default="1,8",
                        help="comma-separated parallel storescu counts (each measured in its own rounds; default 1,8: "
                             "one association, as a PACS sends a study, and 8 concurrent senders)")
    parser.add_argument("--receivers", type=int, default=default_receivers(),
                        help="m3edge receiving processes (DICOM_RECEIVERS; default: the node's, one per core, at most 4)")
    parser.add_argument("--runs", type=int, default=3, help="how many rounds of the whole comparison")
    parser.add_argument("--latency-samples", type=int, default=9,
                        help="one-instance associations timed per target and round, after the transfer (0: none)")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                        help="comma-separated subset of " + ",".join(TARGETS))
    parser.add_argument("--fast-path", default="off",
                        help="m3edge's DICOM_FAST_PATH: off (the default, the node's), on, or on,off (both in the same "
                             f"rounds: the '{FAST_PATH_ON}' and 'm3edge' targets, and their ratio)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "m3edge-bench-corpus")
    parser.add_argument("--workdir", type=Path, default=None, help="where targets store (a temporary folder by default)")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target(s) {', '.join(sorted(unknown))}")
    fast_path = [v.strip() for v in args.fast_path.split(",") if v.strip()]
    if not fast_path or set(fast_path) - {"on", "off"}:
        parser.error("--fast-path takes on, off or on,off")
    if "m3edge" in targets:
        at = targets.index("m3edge")
        targets[at:at + 1] = [name for name, value in ((FAST_PATH_ON, "on"), ("m3edge", "off")) if value in fast_path]
    sender_counts = [int(n) for n in args.senders.split(",") if n.strip()]

    files = corpus(args.cache, args.size_mb, args.rows)
    total = sum(p.stat().st_size for p in files)
    print(f"corpus: {len(files)} instances, {total / 1e6:.1f} MB; sender counts {sender_counts}; {args.runs} "
          f"round(s), targets rotated each round; {os.cpu_count()} CPU core(s)", flush=True)
    results: dict[int, list[Measurement]] = {}
    for senders in sender_counts:
        described = describe_targets(senders, args.receivers)
        print(f"== {senders} sender(s)", flush=True)
        for target in targets:
            print(f"  {target}: {described[target]}", flush=True)
        seconds: dict[str, list[float]] = {target: [] for target in targets}
        latencies: dict[str, list[float]] = {target: [] for target in targets}
        filed: list[float] = []
        with tempfile.TemporaryDirectory(prefix="m3edge-bench-", dir=args.workdir) as tmp:
            for run in range(args.runs):
                order = targets[run % len(targets):] + targets[:run % len(targets)]  # who goes first rotates
                for target in order:
                    work = Path(tmp) / f"{target}-{run}"
                    transfer = _run_target(target, files, work, senders, args.receivers, args.latency_samples)
                    shutil.rmtree(work, ignore_errors=True)
                    seconds[target].append(transfer.seconds)
                    if transfer.latency is not None:
                        latencies[target].append(transfer.latency)
                    if transfer.filed is not None:
                        filed.append(transfer.filed)
                    result = Measurement(target, transfer.seconds, len(files), total)
                    extra = "" if transfer.idle is None else f"  (machine CPU idle during the transfer: {transfer.idle:.0%})"
                    if transfer.latency is not None:
                        extra += f"  one-instance association {transfer.latency * 1000:.0f} ms"
                    if transfer.filed is not None:
                        extra += f"  all rows in {transfer.filed:.2f} s after the last response"
                    print(f"round {run + 1} {target:>11} x{senders}: {result.mb_per_s:8.1f} MB/s  "
                          f"{result.instances_per_s:8.1f} instances/s  ({transfer.seconds:.2f} s){extra}", flush=True)
        medians = [Measurement(target, _median(seconds[target]), len(files), total) for target in targets]
        results[senders] = medians
        print(f"-- {senders} sender(s), median of {args.runs} round(s) (range):")
        for target, result in zip(targets, medians):
            rates = [total / 1e6 / s for s in seconds[target]]
            line = f"{target:>11}: {result.mb_per_s:8.1f} MB/s ({_spread(rates)})"
            if latencies[target]:
                line += f"  one-instance association {_median(latencies[target]) * 1000:.0f} ms"
            print(line)
        if filed:
            print(f"   m3edge: every row in the database {_median(filed):.2f} s (median) after the last response")
        if FAST_PATH_ON in seconds and "m3edge" in seconds:
            ratios = [off / on for on, off in zip(seconds[FAST_PATH_ON], seconds["m3edge"])]
            print(f"   fast path on/off ({FAST_PATH_ON}/m3edge) throughput x{senders}: median of rounds "
                  f"{_median(ratios):.2f} (range {_spread(ratios)})")
            if latencies[FAST_PATH_ON] and latencies["m3edge"]:
                ratios = [on / off for on, off in zip(latencies[FAST_PATH_ON], latencies["m3edge"])]
                print(f"   fast path on/off one-instance association latency: median {_median(ratios):.2f} "
                      f"(range {_spread(ratios)})")
        if "m3edge" in seconds:
            for peer in ("orthanc", "storescp"):
                if peer in seconds:
                    ratios = [peer_s / own for own, peer_s in zip(seconds["m3edge"], seconds[peer])]
                    print(f"   m3edge/{peer} throughput x{senders}: median of rounds {_median(ratios):.2f} "
                          f"(range {_spread(ratios)})")
            if "orthanc" in latencies and latencies["orthanc"] and latencies["m3edge"]:
                ratios = [own / peer for own, peer in zip(latencies["m3edge"], latencies["orthanc"])]
                print(f"   m3edge/orthanc one-instance association latency: median {_median(ratios):.2f} "
                      f"(range {_spread(ratios)})")
    return results


if __name__ == "__main__":
    main()
