"""UIDs and series numbers of the objects m3edge writes, all under one organisation root.

Every UID is derived deterministically from names (study, run, kind of object, revision) with SHA-256, so that running
the report stage again for the same run writes the same UIDs: a PACS receiving the object twice keeps one copy.
The Device UID of an algorithm is derived from its weights digest, so it changes exactly when the model or its
weights change (IHE AI Results).
"""

from __future__ import annotations

import enum
import hashlib
import re

__all__ = ["OrganisationRoot", "ResultKind", "SeriesNumber", "ResultUids"]

_MAX_UID_LENGTH = 64
_MAX_ROOT_LENGTH = 40  # leaves at least 23 characters for the derived part
_ROOT_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


class ResultKind(str, enum.Enum):
    """The kinds of objects m3edge writes into a study; each has its own series."""

    DRAFT_REPORT = "draft-report"
    SEGMENTATION = "segmentation"
    OVERLAY = "overlay"
    VERIFIED_REPORT = "verified-report"
    RETRACTION = "retraction"
    DEVICE = "device"


class SeriesNumber(enum.IntEnum):
    """Fixed series numbers, high enough to sort after the modality's own series in a viewer."""

    DRAFT_REPORT = 9901
    SEGMENTATION = 9902
    OVERLAY = 9903
    VERIFIED_REPORT = 9904
    RETRACTION = 9905


class OrganisationRoot(str):
    """A validated DICOM UID root: digits and dots, no leading zeros, at most 40 characters."""

    def __new__(cls, value: str) -> OrganisationRoot:
        if not isinstance(value, str):
            raise TypeError(f"organisation root must be a str, got {type(value).__name__}")
        value = value.rstrip(".")
        if not _ROOT_PATTERN.match(value):
            raise ValueError(
                f"organisation root {value!r} is not a UID root: use digits separated by dots, "
                "without leading zeros (e.g. your organisation's registered OID)"
            )
        if len(value) > _MAX_ROOT_LENGTH:
            raise ValueError(
                f"organisation root {value!r} has {len(value)} characters: at most {_MAX_ROOT_LENGTH} "
                "leave room for the derived part of a 64-character UID"
            )
        return super().__new__(cls, value)


class ResultUids:
    """Derives the UIDs of one study's results from the organisation root, the study and the run."""

    def __init__(self, root: OrganisationRoot | str, study_instance_uid: str, run_id: str) -> None:
        self.root = OrganisationRoot(root)
        if not isinstance(study_instance_uid, str) or not study_instance_uid:
            raise ValueError("study_instance_uid must be the non-empty Study Instance UID of the source study")
        if not isinstance(run_id, str) or not run_id:
            raise ValueError("run_id must be a non-empty identifier of the pipeline run")
        self.study_instance_uid = study_instance_uid
        self.run_id = run_id

    def derive(self, *names: str) -> str:
        """A UID under the root, fixed for these names."""
        digest = hashlib.sha256("\x1f".join((self.root, *names)).encode()).digest()
        room = _MAX_UID_LENGTH - len(self.root) - 1
        number = int.from_bytes(digest, "big") % (10 ** room)
        return f"{self.root}.{max(number, 1)}"

    def series_uid(self, kind: ResultKind | str, index: int = 0) -> str:
        kind = ResultKind(kind)
        return self.derive("series", self.study_instance_uid, self.run_id, kind.value, str(index))

    def instance_uid(self, kind: ResultKind | str, index: int = 0, revision: int = 0) -> str:
        kind = ResultKind(kind)
        return self.derive("instance", self.study_instance_uid, self.run_id, kind.value, str(index), str(revision))

    def tracking_uid(self, finding: str) -> str:
        """The Tracking Unique Identifier of one finding (a segment, a pathology) in this run."""
        return self.derive("tracking", self.study_instance_uid, self.run_id, finding)

    def device_uid(self, weights_digest: str) -> str:
        """The Device UID of an algorithm: the same for the same weights, different for any other weights."""
        if not isinstance(weights_digest, str) or not weights_digest:
            raise ValueError("weights_digest must be the non-empty digest of the model's weights")
        return self.derive(ResultKind.DEVICE.value, weights_digest)
