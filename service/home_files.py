"""The files under HOME that hold patient data or secrets, and which of them more people can read than should.

What m3edge writes is created 0640/0600 (folders 0750) whatever the umask (``dicom_node.private_files``), but files
made by an older version, copied in, or changed by hand keep their own modes: ``m3edge doctor`` lists them with this.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from dicom_node.intake.admission import DiskAdmission
from dicom_node.private_files import looser_than_private
from service.config import Settings

__all__ = ["LooseEntry", "private_paths", "loose_entries", "spool_refusal"]

# Folders of received images and results are walked this far at most (a spool may hold millions of files): enough to
# find a folder or file made with a loose umask, which its neighbours then share.
_WALK_LIMIT = 5000


@dataclass(frozen=True)
class LooseEntry:
    path: Path
    mode: int

    def __str__(self) -> str:
        return f"{self.path} {self.mode:04o}"


def _database_files(url: str) -> list[Path]:
    if not url.startswith("sqlite"):
        return []
    database = make_url(url).database
    if not database or database == ":memory:":
        return []
    return [Path(database + suffix) for suffix in ("", "-wal", "-shm", "-journal")]


def private_paths(settings: Settings) -> tuple[list[Path], list[Path]]:
    """(single files and folders to check, folders whose contents are checked too), as far as they exist."""
    from service.destinations import DestinationsStore
    from service.routing.store import RoutingRulesStore

    home = settings.home
    single = [home, home / "session.key", DestinationsStore(settings).path, RoutingRulesStore(settings).writable_path,
              *_database_files(settings.effective_database_url)]
    if settings.broker_url is None:
        single += _database_files(settings.effective_broker_url)
    trees = [settings.spool_dir, settings.results_dir, home / "work"]
    return [p for p in single if p.exists()], [p for p in trees if p.is_dir()]


def _walk(folder: Path, limit: int) -> Iterator[Path]:
    yield folder
    seen = 1
    for root, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            if seen >= limit:
                return
            seen += 1
            yield Path(root) / name


def loose_entries(settings: Settings, limit: int = _WALK_LIMIT) -> list[LooseEntry]:
    """Every checked path that grants more than 0640 (files) or 0750 (folders)."""
    single, trees = private_paths(settings)
    found = []
    for path in (*single, *(entry for tree in trees for entry in _walk(tree, limit))):
        try:
            mode = looser_than_private(path)
        except FileNotFoundError:  # removed while we looked (a spool's temporary file)
            continue
        if mode is not None:
            found.append(LooseEntry(path, mode))
    return found


def spool_refusal(settings: Settings) -> str | None:
    """Why the DICOM node would refuse a new association for lack of disk now (``SPOOL_HIGH_WATER_PERCENT``,
    ``SPOOL_RESERVE_BYTES``), else None: the node's own rule, which doctor and the admin page report."""
    return DiskAdmission(settings.spool_dir, settings.spool_high_water_percent, settings.spool_reserve_bytes).refusal()
