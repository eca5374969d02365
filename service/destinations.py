"""The default destinations in force, so an administrator can change them without a restart.

``DESTINATIONS`` (environment or YAML) is the start; once an administrator saves a list through the API it is kept in
``HOME/destinations.yaml`` and wins, for every process that shares HOME (workers pick it up from the next study on).
A route's own ``destinations`` always win over both.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from dicom_node.network import DicomAddress
from dicom_node.private_files import write_atomically
from service.config import Settings

__all__ = ["DestinationsStore"]


class DestinationsStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def path(self) -> Path:
        return self.settings.home / "destinations.yaml"

    def describe(self) -> str:
        return str(self.path) if self.path.is_file() else "DESTINATIONS setting"

    def load(self) -> list[DicomAddress]:
        if not self.path.is_file():
            return list(self.settings.destinations)
        entries = yaml.safe_load(self.path.read_text()) or []
        return [DicomAddress.parse(entry) for entry in entries]

    def save(self, addresses: list[str]) -> list[DicomAddress]:
        """Validate every ``AE@host:port`` (ValueError naming the bad one), then replace the list atomically."""
        parsed = []
        for entry in addresses:
            try:
                parsed.append(DicomAddress.parse(entry))
            except ValueError as exc:
                raise ValueError(f"{entry!r}: {exc}") from None
        if len({str(a) for a in parsed}) != len(parsed):
            raise ValueError("a destination is listed twice")
        with write_atomically(self.path, text=True) as handle:
            yaml.safe_dump([str(a) for a in parsed], handle)
        return parsed
