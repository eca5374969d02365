"""Retraction of a rejected AI draft: an IHE IOCM rejection note (Key Object Selection Document).

When a reader rejects a draft, the node can send nothing (the draft stays in PACS, flagged UNVERIFIED and PARTIAL) or,
as configured, a retraction. DICOM has no "retracted" flag on an SR, and a new SR cannot withdraw an old one; IHE
Imaging Object Change Management (IOCM) defines the mechanism archives understand: a Key Object Selection Document
whose title is a rejection reason from CID 7011 ("Rejected for Quality Reasons" for a wrong AI result; "Rejected for
Patient Safety Reasons" when the result must not be seen, e.g. the wrong patient), referencing every instance to
withdraw (the draft SR, its SEG and overlay). IOCM-aware archives then hide or delete those instances.
"""

from __future__ import annotations

import datetime
import enum

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node.results.content import VerifyingObserver
from dicom_node.results.equipment import WRITER_MANUFACTURER
from dicom_node.results.text import check_text
from dicom_node.results.uids import ResultKind, ResultUids, SeriesNumber

__all__ = ["RejectionReason", "build_retraction"]


class RejectionReason(str, enum.Enum):
    """CID 7011 reasons an IOCM rejection note can carry."""

    QUALITY = "quality"
    PATIENT_SAFETY = "patient-safety"

    @property
    def title(self):
        if self is RejectionReason.QUALITY:
            return codes.DCM.RejectedForQualityReasons
        return codes.DCM.RejectedForPatientSafetyReasons


def build_retraction(
    rejected: list[Dataset],
    reviewer: VerifyingObserver,
    uids: ResultUids,
    *,
    reason: RejectionReason | str = RejectionReason.QUALITY,
    explanation: str | None = None,
    revision: int = 1,
    now: datetime.datetime | None = None,
    demo: bool = False,
) -> hd.ko.KeyObjectSelectionDocument:
    """The rejection note withdrawing ``rejected`` (the draft SR first, then its SEG and overlay); ``demo``: they came
    from a run with DEMO models, and the note says DEMO too (series description and its description text)."""
    reason = RejectionReason(reason)
    rejected = list(rejected)
    if not rejected or any(not isinstance(d, Dataset) for d in rejected):
        raise ValueError("rejected must list the Datasets to withdraw, the draft SR first")
    if len({d.StudyInstanceUID for d in rejected}) != 1:
        raise ValueError("rejected instances must all belong to one study")
    if not isinstance(reviewer, VerifyingObserver):
        raise TypeError("reviewer must be a VerifyingObserver (name and organisation of the reader who rejected)")
    if not isinstance(uids, ResultUids) or uids.study_instance_uid != rejected[0].StudyInstanceUID:
        raise ValueError("uids must be a ResultUids made for the rejected instances' study")
    if explanation is not None and (not isinstance(explanation, str) or not explanation.strip()):
        raise ValueError("explanation must be a non-empty str or None")
    if explanation is not None:
        check_text("explanation", explanation)
    now = now or datetime.datetime.now()
    content = hd.ko.KeyObjectSelection(
        document_title=reason.title,
        referenced_objects=rejected,
        observer_person_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=reviewer.name, organization_name=reviewer.organisation
            ),
        ),
        description=(("DEMO draft: " if demo else "") + (explanation or "AI draft rejected by the reader"))[:1024],
    )
    note = hd.ko.KeyObjectSelectionDocument(
        evidence=rejected,
        content=content,
        series_instance_uid=uids.series_uid(ResultKind.RETRACTION),
        series_number=int(SeriesNumber.RETRACTION),
        sop_instance_uid=uids.instance_uid(ResultKind.RETRACTION, revision=revision),
        instance_number=revision,
        manufacturer=WRITER_MANUFACTURER,
        institution_name=rejected[0].get("InstitutionName") or None,
        series_description="Rejection note: AI draft withdrawn" + (" DEMO" if demo else ""),
        specific_character_set="ISO_IR 192",  # the reader's name and explanation may hold any character
        content_date=now.date(),
        content_time=now.time(),
    )
    note.copy_patient_and_study_information(rejected[0])
    return note
