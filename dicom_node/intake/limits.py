"""The size limits every received instance is held to, whichever way it came in (C-STORE or STOW-RS)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IntakeLimits", "InstanceTooLarge"]


class InstanceTooLarge(ValueError):
    """An instance is larger than a configured limit (C-STORE: Out of Resources; STOW-RS: 413). The message is short
    enough for a C-STORE Error Comment (64 characters) and names the setting."""


@dataclass(frozen=True)
class IntakeLimits:
    """``max_instance_bytes``: one data set as received (``DICOM_MAX_INSTANCE_BYTES``); ``max_inflated_bytes``: one
    deflated data set once inflated (``DICOM_MAX_INFLATED_BYTES``)."""

    max_instance_bytes: int = 2 << 30
    max_inflated_bytes: int = 512 << 20

    def __post_init__(self) -> None:
        for name in ("max_instance_bytes", "max_inflated_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")

    def check_size(self, size: int) -> None:
        if size > self.max_instance_bytes:
            raise InstanceTooLarge(f"{size} bytes, beyond DICOM_MAX_INSTANCE_BYTES={self.max_instance_bytes}")
