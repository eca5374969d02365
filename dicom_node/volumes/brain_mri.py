"""Brain MRI: find the four BraTS sequences (T1c, T1, T2, FLAIR) in a study and read them as volumes.

Each sequence is recognised from SeriesDescription by a ``SequencePattern``: a case-insensitive regular expression
the description must match (``re.search``) and one it must not. The defaults:

- T1c: ``t1`` followed by post/gd/gad/+c/contrast/ce, or post/gd/gad followed by ``t1``, or ``mprage`` with post/gd;
- T1: ``t1`` or ``mprage``, excluding every T1c description;
- T2: ``t2``, excluding FLAIR and T2* (``t2*``, ``t2star``, ``swi``, gradient echo ``gre``);
- FLAIR: ``flair``, excluding T1-weighted FLAIR (``t1``).

Only MR series count; localizer-only series are skipped. When several series match one sequence, ORIGINAL images are
preferred over DERIVED ones (reformats), then the series with the most instances, then the lowest SeriesNumber.
The T1c is chosen first and fixes the frame of reference: the other three must lie in the same one (co-registered),
since they are resampled onto one grid by their affines and nothing registers them. A study lacking a sequence
raises ``NotRoutableError`` ("not routable: no FLAIR series ...") naming the patterns and the descriptions seen.
"""

from __future__ import annotations

import enum
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom import Dataset

from dicom_node.volumes.errors import NotRoutableError, VolumeError
from dicom_node.volumes.geometry import GeometryTolerances
from dicom_node.volumes.series import SeriesVolume, is_localizer, volume_from_series

__all__ = [
    "BrainMriPatterns",
    "BrainMriSequence",
    "BrainMriVolumes",
    "SequencePattern",
    "brain_mri_volumes",
    "select_brain_mri_series",
]

LOGGER = logging.getLogger(__name__)


class BrainMriSequence(str, enum.Enum):
    """The four inputs of the BraTS expert, in the order it takes them."""

    T1C = "T1c"
    T1 = "T1"
    T2 = "T2"
    FLAIR = "FLAIR"


_T1C = r"t1.*(post|gd|gad|\+\s*c\b|contrast|\bce\b|_ce\b|c\+)|(post|gd|gad).*t1|mprage.*(post|gd|gad|\+\s*c\b)"


@dataclass(frozen=True)
class SequencePattern:
    """``include``: SeriesDescription must match (case-insensitive ``re.search``); ``exclude``: must not."""

    include: str
    exclude: str = ""

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            try:
                re.compile(getattr(self, name))
            except re.error as error:
                raise ValueError(f"SequencePattern.{name} {getattr(self, name)!r} is not a valid regex: {error}") from None

    def matches(self, description: str) -> bool:
        if not re.search(self.include, description, re.IGNORECASE):
            return False
        return not (self.exclude and re.search(self.exclude, description, re.IGNORECASE))

    def __str__(self) -> str:
        return f"include {self.include!r}" + (f", exclude {self.exclude!r}" if self.exclude else "")


@dataclass(frozen=True)
class BrainMriPatterns:
    """How each sequence is recognised from SeriesDescription (configurable; see the module docstring)."""

    t1c: SequencePattern = field(default_factory=lambda: SequencePattern(_T1C))
    t1: SequencePattern = field(default_factory=lambda: SequencePattern(r"t1|mprage", _T1C))
    t2: SequencePattern = field(default_factory=lambda: SequencePattern(r"t2", r"flair|t2\s*\*|t2\s*star|swi|\bgre\b"))
    flair: SequencePattern = field(default_factory=lambda: SequencePattern(r"flair", r"t1"))

    def for_sequence(self, sequence: BrainMriSequence) -> SequencePattern:
        return {
            BrainMriSequence.T1C: self.t1c,
            BrainMriSequence.T1: self.t1,
            BrainMriSequence.T2: self.t2,
            BrainMriSequence.FLAIR: self.flair,
        }[sequence]


@dataclass(frozen=True)
class BrainMriVolumes:
    """The four sequences as volumes, in the order T1c, T1, T2, FLAIR (each on its own grid)."""

    volumes: tuple[SeriesVolume, SeriesVolume, SeriesVolume, SeriesVolume]

    @property
    def pairs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(array, affine), ...]`` in the order T1c, T1, T2, FLAIR: what ``engines.resample`` takes."""
        return [(volume.array, volume.affine) for volume in self.volumes]

    @property
    def series_instance_uids(self) -> tuple[str, ...]:
        return tuple(volume.series_instance_uid for volume in self.volumes)


def _group_by_series(datasets: Iterable[Dataset]) -> dict[str, list[Dataset]]:
    groups: dict[str, list[Dataset]] = defaultdict(list)
    for dataset in datasets:
        groups[str(dataset.get("SeriesInstanceUID", ""))].append(dataset)
    return dict(groups)


def _description(series: Sequence[Dataset]) -> str:
    return str(series[0].get("SeriesDescription", "") or "")


def _preference(series: Sequence[Dataset]) -> tuple[int, int, int]:
    """Sort key, smallest first: ORIGINAL before DERIVED, more instances first, lower SeriesNumber first."""
    image_type = [str(value).upper() for value in (series[0].get("ImageType") or [])]
    derived = 1 if image_type[:1] == ["DERIVED"] else 0
    return derived, -len(series), int(series[0].get("SeriesNumber", 0) or 0)


def _frame_of_reference(series: Sequence[Dataset]) -> str:
    return str(series[0].get("FrameOfReferenceUID", "") or "")


def select_brain_mri_series(
    datasets: Iterable[Dataset], patterns: BrainMriPatterns | None = None
) -> dict[BrainMriSequence, list[Dataset]]:
    """Choose the series of each sequence (see the module docstring); raise ``NotRoutableError`` when one lacks."""
    rules = patterns or BrainMriPatterns()
    groups = {
        uid: series
        for uid, series in _group_by_series(datasets).items()
        if str(series[0].get("Modality", "")).upper() == "MR" and not all(is_localizer(ds) for ds in series)
    }
    seen = sorted({_description(series) for series in groups.values()})
    chosen: dict[BrainMriSequence, list[Dataset]] = {}
    frame_of_reference = ""
    for sequence in BrainMriSequence:
        pattern = rules.for_sequence(sequence)
        candidates = [series for series in groups.values() if pattern.matches(_description(series))]
        if not candidates:
            raise NotRoutableError(
                f"not routable: no {sequence.value} series (patterns: {pattern}); "
                f"MR series descriptions in the study: {seen or 'none'}"
            )
        if frame_of_reference:
            same_frame = [series for series in candidates if _frame_of_reference(series) == frame_of_reference]
            if not same_frame:
                raise NotRoutableError(
                    f"not routable: the {sequence.value} series lie in another frame of reference than the T1c "
                    f"({frame_of_reference}); the sequences are not co-registered"
                )
            candidates = same_frame
        candidates.sort(key=_preference)
        chosen[sequence] = candidates[0]
        frame_of_reference = frame_of_reference or _frame_of_reference(candidates[0])
        LOGGER.info("brain MRI: %s <- series %s (%r) of %d candidate(s)", sequence.value,
                    candidates[0][0].get("SeriesInstanceUID", "?"), _description(candidates[0]), len(candidates))
    if not frame_of_reference:
        raise NotRoutableError("not routable: the brain MRI series have no FrameOfReferenceUID")
    return chosen


def brain_mri_volumes(
    datasets: Iterable[Dataset],
    patterns: BrainMriPatterns | None = None,
    tolerances: GeometryTolerances | None = None,
) -> BrainMriVolumes:
    """The four sequences of a brain MRI study as volumes (T1c, T1, T2, FLAIR), each through ``volume_from_series``.

    Raises ``NotRoutableError`` when a sequence lacks, ``VolumeGeometryError`` when a chosen series is not a volume.
    """
    chosen = select_brain_mri_series(datasets, patterns)
    volumes = []
    for sequence in BrainMriSequence:
        try:
            volumes.append(volume_from_series(chosen[sequence], tolerances))
        except VolumeError as error:
            raise type(error)(f"{sequence.value}: {error}") from None
    return BrainMriVolumes(volumes=(volumes[0], volumes[1], volumes[2], volumes[3]))
