"""Which recorded ops a power cut keeps: the strict model and the randomised one (``__init__``'s docstring states
both precisely).

A :class:`Selection` names the kept name ops (indices into ``History.name_ops``) and the kept data ops (indices into
``History.data_ops``), each whole or, for writes, as the byte ranges that reached the disk.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from tests.support.powerloss.history import DataKind, DataOp, History

__all__ = ["CutModel", "Selection", "select", "crash_points", "PAGE_SIZE"]

PAGE_SIZE = 4096  # the unit in which the page cache writes a file back


class CutModel(str, enum.Enum):
    STRICT = "strict"  # only what a sync covers survives
    RANDOM = "random"  # what a sync covers, plus any unsynced subset a journaling file system can leave
    LIVE = "live"  # everything (no power cut: what the kernel held); used to check the recording


@dataclass(frozen=True)
class Selection:
    name_ops: frozenset[int]
    data_ops: dict[int, tuple[tuple[int, int], ...] | None]  # index -> None (whole) or kept ranges, relative to
    # the write's offset

    def kept_data(self, index: int) -> bool:
        return index in self.data_ops


class _Barriers:
    """The last successful barrier on each inode, and the last on the whole file system, among those done before
    ``at``."""

    def __init__(self, history: History, at: int | None) -> None:
        self.last: dict[int, int] = {}
        self.last_everything = 0
        for sync in history.syncs:
            if at is not None and sync.done >= at:
                continue
            if sync.inode is None:
                self.last_everything = max(self.last_everything, sync.seq)
            else:
                self.last[sync.inode] = max(self.last.get(sync.inode, 0), sync.seq)

    def cover(self, seq: int, inodes) -> bool:
        return seq < self.last_everything or any(seq < self.last.get(inode, 0) for inode in inodes)


def _before(seq: int, at: int | None) -> bool:
    return at is None or seq < at


def _durable(history: History, at: int | None) -> tuple[set[int], set[int]]:
    barriers = _Barriers(history, at)
    names = {i for i, op in enumerate(history.name_ops) if barriers.cover(op.seq, op.directories)}
    data = {i for i, op in enumerate(history.data_ops)
            if (op.synchronous and _before(op.seq, at)) or barriers.cover(op.seq, (op.inode,))}
    return names, data


def crash_points(history: History) -> list[int]:
    """The moments at which a strict cut can differ: just after each successful barrier returned."""
    return sorted({sync.done + 1 for sync in history.syncs})


def _pages(op: DataOp) -> list[tuple[int, int]]:
    """A write cut at page boundaries of the file, as ranges relative to its offset."""
    ranges = []
    start = 0
    while start < op.length:
        end = min(op.length, (op.offset + start) // PAGE_SIZE * PAGE_SIZE + PAGE_SIZE - op.offset)
        ranges.append((start, end))
        start = end
    return ranges


def select(history: History, model: CutModel | str, *, seed: int | None = None, keep_probability: float = 0.5,
           at: int | None = None) -> Selection:
    """The ops ``model`` keeps after a power cut at sequence number ``at`` (None: when the processes died); ``seed``
    and ``keep_probability`` only matter to the random model."""
    model = CutModel(model)
    names_before = [i for i, op in enumerate(history.name_ops) if _before(op.seq, at)]
    data_before = [i for i, op in enumerate(history.data_ops) if _before(op.seq, at)]
    if model is CutModel.LIVE:
        return Selection(frozenset(names_before), dict.fromkeys(data_before))
    durable_names, durable_data = _durable(history, at)
    if model is CutModel.STRICT:
        return Selection(frozenset(durable_names), dict.fromkeys(sorted(durable_data)))
    if not 0.0 <= keep_probability <= 1.0:
        raise ValueError(f"keep_probability must lie in [0, 1], not {keep_probability}")
    rng = random.Random(seed)
    # Name ops: the journal commits them in order, so a prefix survives, at least up to the last a sync covers.
    shortest = max(durable_names) + 1 if durable_names else 0
    kept_names = frozenset(range(rng.randint(shortest, len(names_before))))
    kept_data: dict[int, tuple[tuple[int, int], ...] | None] = {}
    for index in data_before:
        op = history.data_ops[index]
        if index in durable_data:
            kept_data[index] = None
        elif op.kind is DataKind.WRITE:
            pages = tuple(page for page in _pages(op) if rng.random() < keep_probability)
            if pages:
                kept_data[index] = pages
        elif rng.random() < keep_probability:
            kept_data[index] = None
    return Selection(kept_names, kept_data)
