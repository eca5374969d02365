"""The content tree of the draft report: TID 1500 with volumes, CXR evaluations and the model's narrative.

Layout (TID 1500 "Imaging Measurement Report"):
- observation context: the VLM as device observer (TID 1004: UID from its weights, name with backend, manufacturer,
  model name with version);
- Procedure Reported: the imaging procedure analysed (CT, MRI, plain radiography);
- Imaging Measurements: per SEG segment a TID 1411 volumetric group (tracking identifier, finding, algorithm
  identification with backend, Referenced Segment, volume in mL); per CXR pathology a TID 1501 group (tracking
  identifier, finding, source image, the score and Present/Absent at the 0.5 threshold);
- Qualitative Evaluations (TID 1500 row 10): TEXT items: the draft statement (with DEMO), the question, the narrative.

When the expert found nothing (no structure, no score) there is nothing to measure: the tree has no Imaging
Measurements container (TID 1500 needs row 6 or row 10, and row 10 is there), and the Qualitative Evaluations start
with a Finding that names the expert and says it found nothing.
"""

from __future__ import annotations

import highdicom as hd
from highdicom.sr.templates import DEFAULT_LANGUAGE
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_node.results.codes import (
    ABSENT,
    AI_SCORE,
    DRAFT_STATEMENT,
    PRESENT,
    QUALITATIVE_EVALUATIONS,
    QUESTION,
    pathology_code,
    procedure_code,
    structure_coding,
)
from dicom_node.results.content import AlgorithmIdentity, DraftReportContent, ExpertFindings
from dicom_node.results.equipment import describe_algorithm
from dicom_node.results.uids import ResultUids

__all__ = [
    "draft_statement",
    "demo_marked",
    "DEMO_NARRATIVE_PREFIX",
    "nothing_found_statement",
    "measurement_report",
    "text_item",
    "qualitative_evaluations_container",
    "NARRATIVE",
    "EXPERT_FINDING",
    "MILLILITRE",
    "NO_UNITS",
]

NARRATIVE = codes.DCM.Findings
EXPERT_FINDING = codes.DCM.Finding  # "the expert found nothing"
MILLILITRE = Code("mL", "UCUM", "milliliter")
NO_UNITS = Code("1", "UCUM", "no units")
_EMPTY_ANSWER = "(the model gave no answer)"


def draft_statement(content: DraftReportContent) -> str:
    """The visible statement that this is an unverified AI draft, naming the models (and DEMO)."""
    models = "; ".join(describe_algorithm(a) for a in content.algorithms)
    demo = (
        "DEMO: produced with random demo weights; the findings are meaningless and only exercise the system. "
        if content.demo else ""
    )
    return (
        f"{demo}AI-generated DRAFT for a qualified reader: not verified, not a diagnosis. "
        "Research and evaluation use only; the models are not approved for diagnostic use. "
        f"Models: {models}."
    )


DEMO_NARRATIVE_PREFIX = "DEMO (random weights, meaningless): "


def demo_marked(narrative: str, demo: bool) -> str:
    """The narrative as the report carries it: a DEMO run's says so at its start, whatever the model wrote."""
    if not demo:
        return narrative
    return DEMO_NARRATIVE_PREFIX + (narrative.strip() or _EMPTY_ANSWER)


def nothing_found_statement(findings: ExpertFindings) -> str:
    """What the report says when the expert segmented no structure and gave no score, naming the expert."""
    algorithm = findings.algorithm
    return (
        f"The expert model {algorithm.name} (version {algorithm.version}) found no structure and reported no score "
        "in the analysed series: nothing was segmented or measured. This is the AI's result, not a verified "
        "absence of findings."
    )


def text_item(name: Code, value: str, when_empty: str = _EMPTY_ANSWER) -> hd.sr.TextContentItem:
    """A TEXT item; an empty value (not allowed in DICOM) is written as ``when_empty``."""
    return hd.sr.TextContentItem(
        name=name, value=value.strip() or when_empty, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def qualitative_evaluations_container(items: list[hd.sr.TextContentItem]) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _algorithm_id(algorithm: AlgorithmIdentity) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[f"backend={algorithm.backend}", f"weights={algorithm.weights_digest}"]
        + (["DEMO weights"] if algorithm.demo else []),
    )


def _volume_groups(
    findings: ExpertFindings, segmentation_dataset: Dataset, uids: ResultUids
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    assert findings.segmentation is not None
    algorithm_id = _algorithm_id(findings.algorithm)
    source_series = hd.sr.SourceSeriesForSegmentation(str(findings.source_images[0].SeriesInstanceUID))
    groups = []
    for number, segment in enumerate(findings.segmentation.segments, start=1):
        coding = structure_coding(segment.name)
        measurements = []
        if segment.volume_ml is not None:
            measurements.append(
                hd.sr.Measurement(
                    name=codes.SCT.Volume, value=float(segment.volume_ml), unit=MILLILITRE
                )
            )
        sites = None
        if coding.anatomic_region is not None or coding.type_modifier is not None:
            location = coding.anatomic_region or coding.type
            sites = [hd.sr.FindingSite(anatomic_location=location, laterality=coding.type_modifier)]
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uids.tracking_uid(segment.name), identifier=segment.name
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=segmentation_dataset.SOPClassUID,
                    sop_instance_uid=segmentation_dataset.SOPInstanceUID,
                    segment_number=number,
                    source_series=source_series,
                ),
                finding_type=coding.type,
                finding_category=coding.category,
                algorithm_id=algorithm_id,
                finding_sites=sites,
                measurements=measurements or None,
            )
        )
    return groups


def _pathology_groups(
    findings: ExpertFindings, uids: ResultUids
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    algorithm_id = _algorithm_id(findings.algorithm)
    source_image = hd.sr.SourceImageForMeasurementGroup.from_source_image(findings.source_images[0])
    groups = []
    for pathology in findings.scores:
        code = pathology_code(pathology.name)
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uids.tracking_uid(f"pathology:{pathology.name}"), identifier=pathology.name[:64]
                ),
                finding_type=code,
                algorithm_id=algorithm_id,
                source_images=[source_image],
                measurements=[
                    hd.sr.Measurement(
                        name=AI_SCORE, value=float(pathology.score), unit=NO_UNITS
                    )
                ],
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(name=code, value=PRESENT if pathology.present else ABSENT)
                ],
            )
        )
    return groups


def device_observer(model: AlgorithmIdentity, uids: ResultUids) -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.device_uid(model.weights_digest),
            name=f"{model.name} ({model.backend})"[:64],
            manufacturer_name=model.manufacturer,
            model_name=f"{model.name} {model.version}"[:64],
        ),
    )


def _tree_root(
    content: DraftReportContent, uids: ResultUids, groups: list
) -> hd.sr.ContainerContentItem:
    """TID 1500 rows 1-4 and, when there is anything measured, row 6 (Imaging Measurements) with ``groups``."""
    observation = hd.sr.ObservationContext(observer_device_context=device_observer(content.model, uids))
    procedure = procedure_code(str(content.findings.source_images[0].get("Modality", "")))
    if groups:
        report = hd.sr.MeasurementReport(
            observation_context=observation, procedure_reported=procedure, imaging_measurements=groups
        )
        return report[0]
    # highdicom's MeasurementReport needs at least one group; the same rows from its own content items, without row 6
    root = hd.sr.ContainerContentItem(name=codes.cid7021.ImagingMeasurementReport, template_id="1500")
    root.ContentSequence = hd.sr.ContentSequence()
    root.ContentSequence.extend(hd.sr.LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE))
    root.ContentSequence.extend(observation)
    root.ContentSequence.append(
        hd.sr.CodeContentItem(
            name=codes.DCM.ProcedureReported, value=procedure,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
        )
    )
    return root


def measurement_report(
    content: DraftReportContent, uids: ResultUids, segmentation_dataset: Dataset | None
) -> hd.sr.ContainerContentItem:
    """The TID 1500 tree (root item) of the draft; ``segmentation_dataset`` is the SEG its volume groups reference."""
    findings = content.findings
    groups: list = []
    if findings.segmentation is not None:
        if segmentation_dataset is None:
            raise ValueError("findings have a segmentation: pass the SEG built from it as segmentation")
        groups.extend(_volume_groups(findings, segmentation_dataset, uids))
    elif segmentation_dataset is not None:
        raise ValueError("findings have no segmentation: a SEG would reference nothing in the report")
    groups.extend(_pathology_groups(findings, uids))
    root = _tree_root(content, uids, groups)
    evaluations = [text_item(DRAFT_STATEMENT, draft_statement(content))]
    if findings.found_nothing:
        evaluations.append(text_item(EXPERT_FINDING, nothing_found_statement(findings)))
    evaluations += [
        text_item(QUESTION, content.narrative.question, when_empty="(no question was asked)"),
        text_item(NARRATIVE, demo_marked(content.narrative.answer, content.demo)),
    ]
    root.ContentSequence.append(qualitative_evaluations_container(evaluations))
    return root
