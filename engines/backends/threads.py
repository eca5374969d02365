"""How many CPU threads the model runtimes of this process may use.

torch (intra-op) and ONNX Runtime each start one thread per core by default: two workers on one host (a CPU-only
install, or one worker per GPU beside its CPU pre- and post-processing) then run twice as many busy threads as there
are cores, and each study takes longer than with one worker. ``m3edge worker`` applies ``WORKER_CPU_THREADS`` here
once, at start: process-wide, as torch's own setting is.
"""

from __future__ import annotations

__all__ = ["limit_cpu_threads", "cpu_thread_limit"]

_limit = 0


def limit_cpu_threads(count: int) -> None:
    """torch, and every ONNX Runtime session made afterwards, use at most ``count`` threads; 0 keeps their defaults."""
    global _limit
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"a thread count must be an int >= 0 (0: the runtimes' default), not {count!r}")
    _limit = count
    if count:
        import torch

        torch.set_num_threads(count)


def cpu_thread_limit() -> int:
    """The limit set by :func:`limit_cpu_threads` (0: none)."""
    return _limit
