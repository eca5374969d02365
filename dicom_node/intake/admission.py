"""Admission control: refuse new associations while the spool's disk is too full to take a study."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DiskAdmission", "DiskUsage", "LOCAL_LIMIT_EXCEEDED"]

# A-ASSOCIATE-RJ (result, source, reason): rejected-transient, DICOM UL service-provider (presentation related),
# local-limit-exceeded. Transient tells the sender to try again later, which is what it should do once space is freed.
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)


@dataclass(frozen=True)
class DiskUsage:
    total_bytes: int
    free_bytes: int  # available to an unprivileged writer

    @property
    def used_percent(self) -> float:
        if self.total_bytes <= 0:
            return 100.0
        return 100.0 * (self.total_bytes - self.free_bytes) / self.total_bytes

    @classmethod
    def of(cls, path: Path) -> DiskUsage:
        stats = os.statvfs(path)
        return cls(stats.f_blocks * stats.f_frsize, stats.f_bavail * stats.f_frsize)

    def describe(self) -> str:
        """The one wording of a disk's state (doctor, the admin page, the node's refusal): free space and % used."""
        return (f"{self.free_bytes / 2**30:.1f} GiB free of {self.total_bytes / 2**30:.1f} GiB, "
                f"{self.used_percent:.0f}% used")


class DiskAdmission:
    """Refuses when the disk holding ``path`` is fuller than ``high_water_percent`` or has less than ``reserve_bytes``."""

    def __init__(self, path: Path, high_water_percent: float, reserve_bytes: int) -> None:
        if not 0 < high_water_percent <= 100:
            raise ValueError(f"high_water_percent must be in (0, 100], not {high_water_percent}")
        if reserve_bytes < 0:
            raise ValueError(f"reserve_bytes must be >= 0, not {reserve_bytes}")
        self.path = Path(path)
        self.high_water_percent = high_water_percent
        self.reserve_bytes = reserve_bytes

    def refusal(self) -> str | None:
        """``None`` while there is room, else a sentence for the log saying which limit is crossed."""
        usage = DiskUsage.of(self.path)
        if usage.free_bytes < self.reserve_bytes:
            return (
                f"only {usage.free_bytes} bytes free on the spool's disk, below SPOOL_RESERVE_BYTES={self.reserve_bytes}"
            )
        if usage.used_percent > self.high_water_percent:
            return (
                f"the spool's disk is {usage.used_percent:.1f}% full, above SPOOL_HIGH_WATER_PERCENT="
                f"{self.high_water_percent:g}"
            )
        return None
