"""Memory of real processes, read from the kernel (/proc/PID/status), and the processes a command started."""

from __future__ import annotations

from pathlib import Path

__all__ = ["rss_bytes", "children", "total_rss"]


def rss_bytes(pid: int) -> int:
    """The resident set size of ``pid`` (VmRSS), in bytes; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def children(pid: int, *, command_contains: str = "") -> list[int]:
    """Direct children of ``pid`` whose command line contains ``command_contains``."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
            cmdline = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        ppid = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("PPid:")), -1)
        if ppid == pid and command_contains in cmdline:
            found.append(int(status.parent.name))
    return sorted(found)


def total_rss(pids: list[int]) -> int:
    return sum(rss_bytes(pid) for pid in pids)
