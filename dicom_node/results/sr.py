"""The SR documents: the AI draft (PARTIAL, UNVERIFIED) and the verified report that replaces it after review.

Both are Comprehensive 3D SR in the source study, in their own series (``SeriesNumber``). The draft's evidence is every
analysed source instance (and the SEG it references), listed in the Current Requested Procedure Evidence Sequence.
The verified report copies the draft's content tree, puts the reader in as person observer, replaces the draft
statement by a verification statement, applies the reader's amendment, and references the draft in the Predecessor
Documents Sequence; it is COMPLETE, FINAL and VERIFIED with Verifying Observer Name, Organization and DateTime.
"""

from __future__ import annotations

import copy
import datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes

from dicom_node.results.codes import DRAFT_STATEMENT, READER_COMMENT, VERIFICATION_STATEMENT, local_coding_scheme
from dicom_node.results.content import Amendment, DraftReportContent, VerifyingObserver
from dicom_node.results.equipment import WRITER_MANUFACTURER, algorithm_equipment
from dicom_node.results.report_content import NARRATIVE, measurement_report, text_item
from dicom_node.results.uids import ResultKind, ResultUids, SeriesNumber

__all__ = ["build_draft_report", "build_verified_report", "COMPREHENSIVE_3D_SR"]

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
UTF8 = "ISO_IR 192"  # the model's and the reader's text may hold any character; names are re-encoded losslessly
_PATIENT_AND_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName",
    "StudyDescription", "IssuerOfPatientID", "OtherPatientIDsSequence", "PatientSize", "PatientWeight",
)
_ROOT_CONTENT = ("ValueType", "ConceptNameCodeSequence", "ContinuityOfContent", "ContentTemplateSequence",
                 "ContentSequence")


def _check_uids(uids: object, study_instance_uid: str) -> ResultUids:
    if not isinstance(uids, ResultUids):
        raise TypeError("uids must be a ResultUids")
    if uids.study_instance_uid != study_instance_uid:
        raise ValueError("uids were made for another study than the report's")
    return uids


def build_draft_report(
    content: DraftReportContent,
    uids: ResultUids,
    *,
    segmentation: Dataset | None = None,
    now: datetime.datetime | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The draft SR: TID 1500 findings, narrative and draft statement; CompletionFlag PARTIAL, UNVERIFIED."""
    if not isinstance(content, DraftReportContent):
        raise TypeError("content must be DraftReportContent")
    findings = content.findings
    _check_uids(uids, findings.study_instance_uid)
    if segmentation is not None and segmentation.get("StudyInstanceUID") != findings.study_instance_uid:
        raise ValueError("segmentation belongs to another study than the findings")
    now = now or datetime.datetime.now()
    root = measurement_report(content, uids, segmentation)
    evidence = [*findings.source_images, *findings.other_evidence]
    if segmentation is not None:
        evidence.append(segmentation)
    demo = " DEMO" if content.demo else ""
    return _sr_document(
        root,
        evidence=evidence,
        series_instance_uid=uids.series_uid(ResultKind.DRAFT_REPORT),
        series_number=int(SeriesNumber.DRAFT_REPORT),
        sop_instance_uid=uids.instance_uid(ResultKind.DRAFT_REPORT),
        instance_number=1,
        manufacturer=WRITER_MANUFACTURER,
        is_complete=False,
        is_final=False,
        is_verified=False,
        institution_name=content.institution_name,
        series_description=f"AI DRAFT report, not verified{demo}"[:64],
        coding_schemes=[local_coding_scheme()],
        specific_character_set=UTF8,
        contributing_equipment=[algorithm_equipment(a, uids, now) for a in content.algorithms],
        content_date=now.date(),
        content_time=now.time(),
    )


def _sr_document(root: Dataset, *, evidence: list[Dataset], **attributes) -> hd.sr.Comprehensive3DSR:
    """highdicom's Comprehensive 3D SR of the content tree ``root``, with its validation (among it: every instance the
    content references is in the evidence)."""
    return hd.sr.Comprehensive3DSR(evidence=evidence, content=root, **attributes)


def _evidence_of(draft: Dataset) -> list[Dataset]:
    """Minimal datasets of the draft's evidence, the first carrying its patient and study attributes."""
    evidence = []
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in draft.get(keyword, []):
            for series in study.ReferencedSeriesSequence:
                for instance in series.ReferencedSOPSequence:
                    item = Dataset()
                    item.StudyInstanceUID = study.StudyInstanceUID
                    item.SeriesInstanceUID = series.SeriesInstanceUID
                    item.SOPClassUID = instance.ReferencedSOPClassUID
                    item.SOPInstanceUID = instance.ReferencedSOPInstanceUID
                    evidence.append(item)
    if not evidence:
        raise ValueError("draft has no evidence sequence: pass the draft SR as written by build_draft_report")
    first = Dataset()
    for keyword in _PATIENT_AND_STUDY:
        if keyword in draft:
            first[keyword] = copy.deepcopy(draft[keyword])
    evidence[0].update(first)
    return evidence


def _text_items(container: Dataset) -> list[Dataset]:
    return [item for item in container.ContentSequence if item.ValueType == "TEXT"]


def _concept(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def _key(code) -> tuple[str, str]:
    return code.value, code.scheme_designator


def _person_observer(observer: VerifyingObserver) -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=codes.cid270.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=observer.name, organization_name=observer.organisation
        ),
    )


def _without_person_observer(items: list[Dataset]) -> list[Dataset]:
    kept, in_person_block = [], False
    for item in items:
        if _concept(item) == _key(codes.DCM.ObserverType):
            in_person_block = item.ConceptCodeSequence[0].CodeValue == codes.DCM.Person.value
        elif item.RelationshipType != "HAS OBS CONTEXT":
            in_person_block = False
        if not in_person_block:
            kept.append(item)
    return kept


def _verified_content(
    draft: Dataset, observer: VerifyingObserver, amendment: Amendment, verified_at: datetime.datetime
) -> Dataset:
    source = Dataset()
    for keyword in _ROOT_CONTENT:
        if keyword not in draft:
            raise ValueError(f"draft lacks {keyword}: pass the draft SR as written by build_draft_report")
        source[keyword] = draft[keyword]
    root = Dataset.from_json(source.to_json_dict())  # a plain copy, whatever classes the draft's items have
    items = list(root.ContentSequence)
    containers = [i for i in items if i.ValueType == "CONTAINER" and _concept(i)[0] == "C0034375"]
    if len(containers) != 1:
        raise ValueError("draft has no Qualitative Evaluations container: it was not written by build_draft_report")
    texts = {_concept(item): item for item in _text_items(containers[0])}
    statement = texts.get(_key(DRAFT_STATEMENT)) or texts.get(_key(VERIFICATION_STATEMENT))
    if statement is None:
        raise ValueError("draft has no draft statement: it was not written by build_draft_report")
    if "DEMO" in str(statement.TextValue):
        raise ValueError("the draft was made with DEMO (random-weight) models: it can never be verified; reprocess "
                         "the study with real weights")
    replacement = text_item(
        VERIFICATION_STATEMENT,
        f"AI-assisted report verified by {observer.name} ({observer.organisation}) on "
        f"{verified_at.isoformat(timespec='seconds')}; it replaces the AI draft "
        f"{draft.SOPInstanceUID}.",
    )
    position = list(containers[0].ContentSequence).index(statement)
    containers[0].ContentSequence[position] = replacement
    if amendment.narrative is not None:
        narrative = texts.get(_key(NARRATIVE))
        if narrative is None:
            containers[0].ContentSequence.append(text_item(NARRATIVE, amendment.narrative))
        else:
            narrative.TextValue = amendment.narrative
    if amendment.findings_comment is not None:
        containers[0].ContentSequence.append(text_item(READER_COMMENT, amendment.findings_comment))
    for correction in amendment.finding_corrections:
        containers[0].ContentSequence.append(text_item(READER_COMMENT, correction.statement()))
    items = _without_person_observer(items)  # an earlier reader, when a verified report is revised
    first_observer = next(
        (n for n, item in enumerate(items) if _concept(item) == _key(codes.DCM.ObserverType)), None
    )
    if first_observer is None:
        raise ValueError("draft has no observer context: it was not written by build_draft_report")
    items[first_observer:first_observer] = list(_person_observer(observer))
    root.ContentSequence = DicomSequence(items)
    return root


def build_verified_report(
    draft: Dataset,
    observer: VerifyingObserver,
    uids: ResultUids,
    *,
    amendment: Amendment | None = None,
    revision: int = 1,
    now: datetime.datetime | None = None,
) -> hd.sr.Comprehensive3DSR:
    """A new SR replacing ``draft`` (the draft or an earlier verified report): VERIFIED, COMPLETE, FINAL.

    A draft made with DEMO models (its draft statement says DEMO) is refused with ValueError: random weights are
    never verified."""
    if not isinstance(draft, Dataset) or draft.get("SOPClassUID") != COMPREHENSIVE_3D_SR:
        raise TypeError("draft must be the Comprehensive 3D SR dataset of the report being verified")
    if not isinstance(observer, VerifyingObserver):
        raise TypeError("observer must be a VerifyingObserver (name and organisation of the reader)")
    amendment = amendment if amendment is not None else Amendment()
    if not isinstance(amendment, Amendment):
        raise TypeError("amendment must be an Amendment or None")
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
        raise ValueError("revision must be an int >= 1 (1 for the first verified report, 2 for the next, ...)")
    _check_uids(uids, str(draft.StudyInstanceUID))
    now = now or datetime.datetime.now()
    report = _sr_document(
        _verified_content(draft, observer, amendment, now),
        evidence=_evidence_of(draft),
        series_instance_uid=uids.series_uid(ResultKind.VERIFIED_REPORT),
        series_number=int(SeriesNumber.VERIFIED_REPORT),
        sop_instance_uid=uids.instance_uid(ResultKind.VERIFIED_REPORT, revision=revision),
        instance_number=revision,
        manufacturer=WRITER_MANUFACTURER,
        is_complete=True,
        is_final=True,
        is_verified=True,
        institution_name=draft.get("InstitutionName") or None,
        verifying_observer_name=observer.name,
        verifying_organization=observer.organisation,
        previous_versions=[draft],
        series_description="AI-assisted report, verified by a reader",
        coding_schemes=[local_coding_scheme()],
        specific_character_set=UTF8,
        content_date=now.date(),
        content_time=now.time(),
    )
    report.VerifyingObserverSequence[0].VerificationDateTime = now.strftime("%Y%m%d%H%M%S")
    if "ContributingEquipmentSequence" in draft:
        report.ContributingEquipmentSequence = copy.deepcopy(draft.ContributingEquipmentSequence)
    return report
