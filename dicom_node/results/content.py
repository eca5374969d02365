"""What the report writers take: plain, checked values the service maps the engines' results onto.

Nothing here knows about engines or torch. A label volume comes on the source grid in the engines' convention:
shape (X, Y, Z) = (column, row, slice) with a 4x4 affine from voxel index to RAS millimetres; ``seg.py`` turns it into
frames ordered like the source instances.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.results.text import check_line, check_text

__all__ = [
    "AlgorithmIdentity",
    "StructureSegment",
    "LabelSegmentation",
    "PathologyScore",
    "ExpertFindings",
    "Narrative",
    "DraftReportContent",
    "VerifyingObserver",
    "Amendment",
    "POSITIVE_SCORE_THRESHOLD",
]

POSITIVE_SCORE_THRESHOLD = 0.5  # the protocol's "yes" for a CXR pathology score


def _check_text(name: str, value: object, *, max_length: int = 64, allow_empty: bool = False) -> str:
    """A short string (SH, LO, PN: up to 64 characters, no control character, no backslash) or, with a larger
    ``max_length``, a text (ST, LT, UT: line breaks and form feeds only)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value.strip() and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_length:
        raise ValueError(f"{name} has {len(value)} characters; at most {max_length} fit the DICOM attribute")
    return check_line(name, value) if max_length <= 64 else check_text(name, value)


@dataclass(frozen=True)
class AlgorithmIdentity:
    """One model that contributed: an expert (VISTA3D, BraTS, CXR ensemble) or the VLM."""

    name: str
    version: str
    manufacturer: str
    backend: str
    weights_digest: str
    demo: bool = False

    def __post_init__(self) -> None:
        _check_text("name", self.name)
        _check_text("version", self.version)
        _check_text("manufacturer", self.manufacturer)
        _check_text("backend", self.backend)
        _check_text("weights_digest", self.weights_digest, max_length=128)
        if not isinstance(self.demo, bool):
            raise TypeError(f"demo must be a bool, got {type(self.demo).__name__}")


@dataclass(frozen=True)
class StructureSegment:
    """One segment of a SEG: the union of some label ids, with its name and measured volume.

    VISTA3D: one label id per structure. BraTS: overlapping regions, TC = (1, 4), WT = (1, 2, 4), ET = (4,).
    """

    name: str
    label_ids: tuple[int, ...]
    volume_ml: float | None = None

    def __post_init__(self) -> None:
        _check_text("name", self.name)
        if isinstance(self.label_ids, (str, bytes)) or not isinstance(self.label_ids, Sequence):
            raise TypeError("label_ids must be a tuple of ints")
        ids = tuple(self.label_ids)
        if not ids:
            raise ValueError(f"label_ids of segment {self.name!r} must name at least one label")
        for label_id in ids:
            if isinstance(label_id, bool) or not isinstance(label_id, (int, np.integer)) or label_id <= 0:
                raise ValueError(f"label_ids of segment {self.name!r} must be positive ints (0 is background)")
        object.__setattr__(self, "label_ids", tuple(int(i) for i in ids))
        if self.volume_ml is not None:
            if isinstance(self.volume_ml, bool) or not isinstance(self.volume_ml, (int, float)):
                raise TypeError(f"volume_ml of segment {self.name!r} must be a number or None")
            if not math.isfinite(self.volume_ml) or self.volume_ml < 0:
                raise ValueError(f"volume_ml of segment {self.name!r} must be finite and >= 0")


@dataclass(frozen=True, eq=False)
class LabelSegmentation:
    """A label volume on the grid of one source series, and the segments to write from it."""

    labels: np.ndarray
    affine: np.ndarray
    segments: tuple[StructureSegment, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.labels, np.ndarray) or self.labels.ndim != 3:
            raise ValueError("labels must be a 3-D numpy array in (X, Y, Z) = (column, row, slice) order")
        if not np.issubdtype(self.labels.dtype, np.integer):
            raise TypeError(f"labels must hold integer label ids, got dtype {self.labels.dtype}")
        affine = np.asarray(self.affine, dtype=float)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
            raise ValueError("affine must be an invertible 4x4 matrix from voxel index to RAS mm")
        object.__setattr__(self, "affine", affine)
        segments = tuple(self.segments)
        if not segments:
            raise ValueError("segments must name at least one segment")
        if any(not isinstance(s, StructureSegment) for s in segments):
            raise TypeError("segments must be StructureSegment instances")
        names = [s.name for s in segments]
        if len(set(names)) != len(names):
            raise ValueError(f"segment names must be unique, got {names}")
        object.__setattr__(self, "segments", segments)


@dataclass(frozen=True)
class PathologyScore:
    """One CXR pathology with the ensemble's score (0..1); present when score >= 0.5."""

    name: str
    score: float

    def __post_init__(self) -> None:
        _check_text("name", self.name)
        if isinstance(self.score, bool) or not isinstance(self.score, (int, float)):
            raise TypeError(f"score of {self.name!r} must be a number")
        if not (0.0 <= float(self.score) <= 1.0):
            raise ValueError(f"score of {self.name!r} must be within 0..1, got {self.score}")

    @property
    def present(self) -> bool:
        return float(self.score) >= POSITIVE_SCORE_THRESHOLD


@dataclass(frozen=True, eq=False)
class ExpertFindings:
    """What one expert found in one study, with the headers of the source instances it analysed.

    Neither a segmentation nor scores is a result too: the expert found nothing (``found_nothing``), and the report
    says so instead of measuring.
    """

    algorithm: AlgorithmIdentity
    source_images: tuple[Dataset, ...]
    segmentation: LabelSegmentation | None = None
    scores: tuple[PathologyScore, ...] = ()
    other_evidence: tuple[Dataset, ...] = ()  # further series analysed (e.g. the other BraTS sequences)

    def __post_init__(self) -> None:
        if not isinstance(self.algorithm, AlgorithmIdentity):
            raise TypeError("algorithm must be an AlgorithmIdentity")
        sources = tuple(self.source_images)
        if not sources or any(not isinstance(d, Dataset) for d in sources):
            raise ValueError("source_images must hold the pydicom Datasets of the analysed series (at least one)")
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
            if any(keyword not in d for d in sources):
                raise ValueError(f"every source image needs {keyword}")
        if len({d.StudyInstanceUID for d in sources + tuple(self.other_evidence)}) != 1:
            raise ValueError("source_images and other_evidence must all belong to one study")
        if len({d.SeriesInstanceUID for d in sources}) != 1:
            raise ValueError("source_images must come from one series (put other series in other_evidence)")
        object.__setattr__(self, "source_images", sources)
        object.__setattr__(self, "other_evidence", tuple(self.other_evidence))
        scores = tuple(self.scores)
        if any(not isinstance(s, PathologyScore) for s in scores):
            raise TypeError("scores must be PathologyScore instances")
        object.__setattr__(self, "scores", scores)
        if self.segmentation is not None and not isinstance(self.segmentation, LabelSegmentation):
            raise TypeError("segmentation must be a LabelSegmentation or None")

    @property
    def found_nothing(self) -> bool:
        """The expert segmented no structure and gave no score."""
        return self.segmentation is None and not self.scores

    @property
    def study_instance_uid(self) -> str:
        return str(self.source_images[0].StudyInstanceUID)


@dataclass(frozen=True)
class Narrative:
    """The question asked and the model's answer (the text that goes into the report)."""

    question: str
    answer: str

    def __post_init__(self) -> None:
        _check_text("question", self.question, max_length=10_000, allow_empty=True)
        _check_text("answer", self.answer, max_length=60_000, allow_empty=True)


@dataclass(frozen=True, eq=False)
class DraftReportContent:
    """Everything the draft SR says: the expert's findings, the VLM's narrative, which models ran."""

    findings: ExpertFindings
    narrative: Narrative
    model: AlgorithmIdentity
    institution_name: str | None = None
    extra_algorithms: tuple[AlgorithmIdentity, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.findings, ExpertFindings):
            raise TypeError("findings must be ExpertFindings")
        if not isinstance(self.narrative, Narrative):
            raise TypeError("narrative must be a Narrative")
        if not isinstance(self.model, AlgorithmIdentity):
            raise TypeError("model must be the VLM's AlgorithmIdentity")
        if self.institution_name is not None:
            _check_text("institution_name", self.institution_name)
        object.__setattr__(self, "extra_algorithms", tuple(self.extra_algorithms))

    @property
    def demo(self) -> bool:
        return any(a.demo for a in self.algorithms)

    @property
    def algorithms(self) -> tuple[AlgorithmIdentity, ...]:
        return (self.findings.algorithm, self.model, *self.extra_algorithms)


@dataclass(frozen=True)
class VerifyingObserver:
    """The qualified reader who verified the report, and their organisation; both required.

    ``name`` is a DICOM person name (``Family^Given``); a name without ``^`` is kept whole as one component
    (a trailing ``^`` is added, as PS3.5 6.2.1 asks for a single-component name).
    """

    name: str
    organisation: str

    def __post_init__(self) -> None:
        _check_text("name", self.name)
        _check_text("organisation", self.organisation)
        if "^" not in self.name:
            object.__setattr__(self, "name", f"{self.name.strip()}^")


@dataclass(frozen=True)
class FindingCorrection:
    """The reader's word on one expert finding (a structure or pathology by its name in the draft): present or absent
    (``None``: as drafted) and a note. The verified SR carries it as a comment naming the finding."""

    name: str
    present: bool | None = None
    note: str = ""

    def __post_init__(self) -> None:
        _check_text("name", self.name)
        if self.present is not None and not isinstance(self.present, bool):
            raise TypeError("present must be True, False or None (as drafted)")
        _check_text("note", self.note, max_length=1024, allow_empty=True)
        if self.present is None and not self.note.strip():
            raise ValueError(f"a correction of {self.name!r} needs present/absent or a note")

    def statement(self) -> str:
        verdict = {True: "present", False: "absent", None: "as drafted"}[self.present]
        note = self.note.strip()
        return f"Reader's assessment of {self.name}: {verdict}." + (f" {note}" if note else "")


@dataclass(frozen=True)
class Amendment:
    """The reader's changes: a replacement narrative, a comment on the findings and corrections of single findings
    (None or empty keeps the draft's)."""

    narrative: str | None = None
    findings_comment: str | None = None
    finding_corrections: tuple[FindingCorrection, ...] = ()

    def __post_init__(self) -> None:
        if self.narrative is not None:
            _check_text("narrative", self.narrative, max_length=60_000)
        if self.findings_comment is not None:
            _check_text("findings_comment", self.findings_comment, max_length=60_000)
        object.__setattr__(self, "finding_corrections", tuple(self.finding_corrections))
        for correction in self.finding_corrections:
            if not isinstance(correction, FindingCorrection):
                raise TypeError("finding_corrections must hold FindingCorrection objects")
        if len(self.finding_corrections) > 256:
            raise ValueError("at most 256 finding corrections")
