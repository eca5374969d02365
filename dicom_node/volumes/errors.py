"""Why a study or series cannot become expert input: typed errors whose message says why and what to do."""

from __future__ import annotations

__all__ = ["NoFrontalViewError", "NotRoutableError", "VolumeError", "VolumeGeometryError"]


class VolumeError(ValueError):
    """DICOM data that cannot be turned into the array an expert takes."""


class VolumeGeometryError(VolumeError):
    """A series that is not one regular volume (tilt, gaps, mixed orientations, several stacks, ...).

    The message names the problem and the series, so an operator can pick another series or fix the export;
    the series is never stacked anyway.
    """


class NotRoutableError(VolumeError):
    """A study lacks what an expert needs (e.g. a brain MRI without a FLAIR series): it cannot be routed there."""


class NoFrontalViewError(NotRoutableError):
    """A chest radiograph study with no frontal (PA or AP) image."""
