"""``PowerLossSimulator``: arm it on a folder, run processes with its ``env()``, kill them, ``cut()``.

    simulator = PowerLossSimulator(home, tmp_path / "powerloss", shim).arm()
    process = subprocess.Popen(command, env=simulator.env(), start_new_session=True)
    ...                                     # acknowledge things
    os.killpg(process.pid, signal.SIGKILL)  # every process that wrote under `home` must be dead
    report = simulator.cut("strict")        # `home` now holds what a disk could hold after a power cut
    # the simulator is armed again on the cut tree: restart the processes with env() for the next cycle
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.powerloss.durability import CutModel, Selection, crash_points, select
from tests.support.powerloss.history import (
    Baseline, History, RecordingMismatch, UnsupportedOperation, replay, take_baseline,
)
from tests.support.powerloss.journal import Journal, JournalError, forget_logs, read_journal
from tests.support.powerloss.tree import LiveFile, ModelTree, build_tree, check_live_tree, write_tree

__all__ = ["PowerLossSimulator", "CutReport", "StillRecording"]


class StillRecording(RuntimeError):
    """A process started with the simulator's environment is still alive: kill it (all of them) before the cut."""


@dataclass(frozen=True)
class CutReport:
    """What one cut did to the watched tree (paths relative to it)."""

    model: CutModel
    seed: int | None
    name_ops: int  # recorded name changes (create, link, rename, unlink, mkdir, rmdir)
    data_ops: int  # recorded data changes (writes, truncations, fallocate)
    kept_name_ops: int
    kept_data_ops: int  # whole or in part
    lost: tuple[str, ...]  # names the processes saw that the cut removed
    added: tuple[str, ...]  # names the cut brings back (a removal or rename that was not durable)
    changed: tuple[str, ...]  # files whose bytes differ from what the processes saw
    unmodelled: tuple[str, ...]  # files written through shared mappings (SQLite's -shm): their bytes are not modelled
    in_flight: int  # changes under way when the processes died
    torn_records: int
    anomalies: tuple[str, ...] = ()  # what the cut left out because no disk could hold it (a directory's second name)

    def describe(self) -> str:
        return (f"{self.model.value} cut (seed {self.seed}): kept {self.kept_name_ops}/{self.name_ops} name changes, "
                f"{self.kept_data_ops}/{self.data_ops} data changes; lost {len(self.lost)}, brought back "
                f"{len(self.added)}, changed {len(self.changed)} files; {self.in_flight} in flight")


class PowerLossSimulator:
    """Records every durable change under ``root`` by processes run with :meth:`env`, and replaces ``root`` with a
    state a disk could hold after a power cut (:meth:`cut`). ``workdir`` (outside ``root``) holds the logs and the
    baseline copy; ``shim`` is the library :func:`tests.support.powerloss.build_shim` built."""

    def __init__(self, root: Path, workdir: Path, shim: Path) -> None:
        self.root = Path(root).resolve()
        self.workdir = Path(workdir).resolve()
        self.shim = Path(shim).resolve()
        if self.workdir == self.root or self.root in self.workdir.parents or self.workdir in self.root.parents:
            raise ValueError(f"workdir {self.workdir} must lie outside the watched root {self.root} (and not hold it)")
        if not self.shim.is_file():
            raise FileNotFoundError(f"{self.shim}: build the recorder with build_shim() first")
        self.log_dir = self.workdir / "log"
        self._baseline: Baseline | None = None
        self.cuts = 0
        self.last_history: History | None = None  # the last cut's, to explain a failure (its data is gone)
        self.last_selection: Selection | None = None

    # -- recording ------------------------------------------------------------------------------------------------

    def arm(self) -> PowerLossSimulator:
        """Take the tree as it is now as durable (as after ``sync``) and start a fresh recording."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self._baseline is not None:
            self._check_nobody_records()
        return self._arm()

    def _arm(self) -> PowerLossSimulator:
        forget_logs()
        copies = self.workdir / "baseline"
        for folder in (copies, self.log_dir):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        (self.log_dir / "seq").write_bytes(bytes(8))
        self._baseline = take_baseline(self.root, copies)
        return self

    def env(self, base: Mapping[str, str] | None = None, *, slow_directory_sync_ms: int = 0) -> dict[str, str]:
        """``base`` (default: this process's environment) with the recorder preloaded and pointed at the root.

        ``slow_directory_sync_ms`` injects a fault: every fsync/fdatasync of a directory under the root waits that
        long first, as a disk slow to commit its journal would (what completes meanwhile is not covered by it)."""
        if self._baseline is None:
            raise RuntimeError("arm() the simulator before starting processes under it")
        env = dict(os.environ if base is None else base)
        preload = env.get("LD_PRELOAD", "")
        env["LD_PRELOAD"] = f"{self.shim} {preload}".strip()
        env["POWERLOSS_ROOT"] = str(self.root)
        env["POWERLOSS_LOG_DIR"] = str(self.log_dir)
        env.pop("POWERLOSS_SLOW_DIRECTORY_SYNC_MS", None)
        if slow_directory_sync_ms:
            env["POWERLOSS_SLOW_DIRECTORY_SYNC_MS"] = str(int(slow_directory_sync_ms))
        return env

    def journal(self) -> Journal:
        return read_journal(self.log_dir)

    def _recording_processes(self) -> list[str]:
        """The live processes that map this simulator's sequence counter (every process under the recorder does)."""
        counter = str(self.log_dir / "seq")
        alive = []
        for maps in Path("/proc").glob("[0-9]*/maps"):
            try:
                if counter in maps.read_text():
                    alive.append(maps.parent.name)
            except OSError:
                continue  # gone meanwhile, or not ours to read
        return sorted(alive)

    def _check_nobody_records(self, wait: float = 0.0) -> None:
        deadline = time.monotonic() + wait
        while alive := self._recording_processes():
            if time.monotonic() >= deadline:
                raise StillRecording(f"processes {', '.join(alive)} still run under the recorder of {self.root}")
            time.sleep(0.02)  # a killed process takes a moment to release its memory

    # -- the cut --------------------------------------------------------------------------------------------------

    def history(self) -> History:
        """Every recorded change replayed from the baseline (not yet checked against the tree: see :meth:`cut`)."""
        if self._baseline is None:
            raise RuntimeError("arm() the simulator first")
        journal = self.journal()
        if journal.broken:
            raise RecordingMismatch("the recorder could not write its log: " + " | ".join(journal.broken))
        try:
            history = replay(self._baseline, journal, self.root)
        except JournalError as exc:
            raise RecordingMismatch(str(exc)) from exc
        if history.unsupported:
            raise UnsupportedOperation("the model does not cover: " + "; ".join(history.unsupported[:10]),
                                       tuple(history.unsupported))
        return history

    def _checked_history(self, wait: float) -> tuple[History, ModelTree, dict[str, LiveFile]]:
        """The history once every recorded process is gone, checked to explain the tree as it is now: with the tree
        it leads to (no power cut) and the real tree's names."""
        self._check_nobody_records(wait)
        history = self.history()
        live_tree = build_tree(history, select(history, CutModel.LIVE))
        return history, live_tree, check_live_tree(history, live_tree, self.root)

    def preview(self, model: CutModel | str = CutModel.STRICT, *, seeds: Iterable[int | None] = (None,),
                keep_probability: float = 0.5, at: Iterable[int | None] = (None,),
                only: Callable[[str], bool] = lambda _path: True) -> list[dict[str, bytes | None]]:
        """The trees ``model`` would leave (relative path -> bytes, None for a directory), one per seed and power-cut
        moment in ``at`` (sequence numbers, e.g. :meth:`crash_points`; None: when the processes died), without
        touching the disk; ``only`` picks the files whose bytes are built (others map to ``b""``). Checks once that
        the recording explains the tree, as :meth:`cut` does."""
        history, _, _ = self._checked_history(wait=0.0)
        trees = []
        for moment in at:
            for seed in seeds:
                selection = select(history, model, seed=seed, keep_probability=keep_probability, at=moment)
                tree = build_tree(history, selection)
                trees.append({path: None if tree.is_dir(path) else tree.content(inode) if only(path) else b""
                              for path, inode in sorted(tree.paths.items())})
        return trees

    def crash_points(self) -> list[int]:
        """The moments (sequence numbers) at which a strict cut can leave a different tree: just after each sync the
        recorded processes completed. ``preview(at=simulator.crash_points())`` is a power cut at every one."""
        return crash_points(self.history())

    def cut(self, model: CutModel | str = CutModel.STRICT, *, seed: int | None = None,
            keep_probability: float = 0.5, rearm: bool = True, wait: float = 10.0) -> CutReport:
        """Replace the watched tree with the state ``model`` leaves after a power cut at the moment the processes
        died, and (``rearm``) start recording afresh from it. Raises :class:`StillRecording` if a recorded process
        still lives after ``wait`` seconds, :class:`RecordingMismatch` if the recording does not explain the tree."""
        model = CutModel(model)
        history, live_tree, live = self._checked_history(wait)
        selection = select(history, model, seed=seed, keep_probability=keep_probability)
        tree = build_tree(history, selection)
        report = self._report(model, seed, history, selection, live_tree, tree)
        self.last_history, self.last_selection = history, selection
        write_tree(tree, self.root, live)
        self.cuts += 1
        if rearm:
            self._arm()
        return report

    @staticmethod
    def _report(model: CutModel, seed: int | None, history: History, selection: Selection, live_tree: ModelTree,
                tree: ModelTree) -> CutReport:
        lost = tuple(sorted(set(live_tree.paths) - set(tree.paths)))
        added = tuple(sorted(set(tree.paths) - set(live_tree.paths)))
        changed = []
        for path in sorted(set(tree.paths) & set(live_tree.paths)):
            before, after = live_tree.paths[path], tree.paths[path]
            if live_tree.is_dir(path) or tree.is_dir(path):
                continue
            if before == after and live_tree.ops.get(before) == tree.ops.get(after):
                continue  # the same inode with the same kept changes
            if before != after or _digest(live_tree.content(before)) != _digest(tree.content(after)):
                changed.append(path)
        unmodelled = tuple(sorted(path for path, inode in tree.paths.items()
                                  if history.inodes[inode].mapped_for_writing))
        return CutReport(model, seed, len(history.name_ops), len(history.data_ops), len(selection.name_ops),
                         len(selection.data_ops), lost, added, tuple(changed), unmodelled, history.in_flight,
                         history.torn_records, tuple(tree.anomalies))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
