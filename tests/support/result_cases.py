"""Typical inputs of the result writers: a CT with VISTA3D-like labels, a brain MRI with BraTS labels, a CXR with scores."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np

from dicom_node.results import (
    AlgorithmIdentity,
    DraftReportContent,
    ExpertFindings,
    LabelSegmentation,
    Narrative,
    PathologyScore,
    ResultUids,
    StructureSegment,
)
from tests.support.source_study import SourceStudy, brain_mr_study, ct_study, cxr_study, engine_affine

__all__ = ["ResultCase", "ct_case", "brain_case", "cxr_case", "enhanced_ct_case", "nothing_found_case", "ORG_ROOT",
           "FIXED_TIME", "CXR_PATHOLOGIES"]

ORG_ROOT = "1.2.826.0.1.3680043.10.1177"
FIXED_TIME = datetime.datetime(2026, 1, 2, 3, 4, 5)
CXR_PATHOLOGIES = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis", "Effusion",
    "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia", "Lung Lesion", "Fracture",
    "Lung Opacity", "Enlarged Cardiomediastinum",
)


@dataclass
class ResultCase:
    study: SourceStudy
    content: DraftReportContent
    uids: ResultUids
    labels: np.ndarray | None = None


def _vlm(demo: bool) -> AlgorithmIdentity:
    return AlgorithmIdentity("VILA-M3-8B", "1.0", "NVIDIA", "torch-cpu", "sha256:" + "ab" * 32, demo=demo)


def ct_case(demo: bool = True) -> ResultCase:
    """Liver (1), right kidney (5), left kidney (14), hepatic tumor (26) on a 20 x 24 x 6 CT grid."""
    study = ct_study()
    series = study.series["ct"]
    labels = np.zeros((20, 24, 6), dtype=np.int16)  # (X, Y, Z) = (column, row, slice)
    labels[2:9, 3:12, 1:5] = 1
    labels[4:6, 5:7, 2:4] = 26
    labels[11:15, 14:20, 0:3] = 5
    labels[15:19, 14:20, 3:6] = 14
    voxel_ml = 0.8 * 0.8 * 2.5 / 1000
    segments = tuple(
        StructureSegment(name, (label,), round(float(np.count_nonzero(labels == label)) * voxel_ml, 3))
        for name, label in (("liver", 1), ("right kidney", 5), ("left kidney", 14), ("hepatic tumor", 26))
    )
    expert = AlgorithmIdentity("VISTA3D", "0.5.4", "NVIDIA", "onnxruntime-cpu", "sha256:" + "cd" * 32, demo=demo)
    findings = ExpertFindings(expert, tuple(series), LabelSegmentation(labels, engine_affine(series), segments))
    narrative = Narrative("Describe the liver.", "The liver is segmented; a hepatic lesion ≥ 1 cm is seen (Ø 12 mm, 肝).")
    content = DraftReportContent(findings, narrative, _vlm(demo), institution_name="Test Hospital")
    return ResultCase(study, content, ResultUids(ORG_ROOT, study.study_instance_uid, "run-ct-1"), labels)


def brain_case(demo: bool = False) -> ResultCase:
    """BraTS labels 1 (necrotic core), 2 (oedema), 4 (enhancing) on the T1c grid; TC/WT/ET as overlapping segments."""
    study = brain_mr_study()
    series = study.series["t1c"]
    labels = np.zeros((16, 16, 5), dtype=np.uint8)
    labels[3:13, 3:13, 0:5] = 2
    labels[5:11, 5:11, 1:4] = 1
    labels[6:9, 6:9, 2:3] = 4
    counts = {label: int(np.count_nonzero(labels == label)) for label in (1, 2, 4)}
    segments = (
        StructureSegment("tumor core", (1, 4), (counts[1] + counts[4]) / 1000),
        StructureSegment("whole tumor", (1, 2, 4), (counts[1] + counts[2] + counts[4]) / 1000),
        StructureSegment("enhancing tumor", (4,), counts[4] / 1000),
    )
    others = tuple(ds for name in ("t1", "t2", "flair") for ds in study.series[name])
    expert = AlgorithmIdentity("BraTS SegResNet", "0.5.2", "MONAI", "torch-cpu", "sha256:" + "ef" * 32, demo=demo)
    findings = ExpertFindings(
        expert, tuple(series), LabelSegmentation(labels, engine_affine(series), segments), other_evidence=others
    )
    narrative = Narrative("Is there a brain tumor?", "An enhancing lesion with surrounding oedema is present.")
    content = DraftReportContent(findings, narrative, _vlm(demo))
    return ResultCase(study, content, ResultUids(ORG_ROOT, study.study_instance_uid, "run-mr-1"), labels)


def cxr_case(demo: bool = True) -> ResultCase:
    """The 18 TorchXRayVision pathologies with scores; Effusion and Cardiomegaly above 0.5."""
    study = cxr_study()
    scores = tuple(
        PathologyScore(name, 0.8 if name in ("Effusion", "Cardiomegaly") else round(0.05 * (i % 9), 2))
        for i, name in enumerate(CXR_PATHOLOGIES)
    )
    expert = AlgorithmIdentity("TorchXRayVision ensemble", "1.2.1", "mlmed", "onnxruntime-cpu",
                               "sha256:" + "01" * 32, demo=demo)
    findings = ExpertFindings(expert, tuple(study.series["cxr"]), scores=scores)
    narrative = Narrative("What do you see?", "Cardiomegaly with a right pleural effusion.")
    content = DraftReportContent(findings, narrative, _vlm(demo))
    return ResultCase(study, content, ResultUids(ORG_ROOT, study.study_instance_uid, "run-cxr-1"))


def enhanced_ct_case(demo: bool = True) -> ResultCase:
    """pydicom's real Enhanced CT (``eCT_Supplemental.dcm``: one instance, two 512 x 512 frames, 10 mm apart) with a
    liver and a spleen label on its grid, as the volume reader places it."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    from dicom_node.volumes import volume_from_series

    image = dcmread(get_testdata_file("eCT_Supplemental.dcm"))
    volume = volume_from_series([image])
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[100:300, 150:350, :] = 1
    labels[320:400, 200:260, 1] = 3
    voxel_ml = float(np.prod(volume.voxel_spacing)) / 1000
    segments = tuple(StructureSegment(name, (label,), round(float(np.count_nonzero(labels == label)) * voxel_ml, 3))
                     for name, label in (("liver", 1), ("spleen", 3)))
    header = dcmread(get_testdata_file("eCT_Supplemental.dcm"), stop_before_pixels=True)
    expert = AlgorithmIdentity("VISTA3D", "0.5.4", "NVIDIA", "onnxruntime-cpu", "sha256:" + "cd" * 32, demo=demo)
    findings = ExpertFindings(expert, (header,), LabelSegmentation(labels, volume.affine, segments))
    content = DraftReportContent(findings, Narrative("Describe the image.", "Liver and spleen segmented."),
                                 _vlm(demo))
    study = SourceStudy(str(image.StudyInstanceUID), {"ct": [image]})
    return ResultCase(study, content, ResultUids(ORG_ROOT, study.study_instance_uid, "run-enhanced-1"), labels)


def nothing_found_case(kind: str = "ct", demo: bool = True) -> ResultCase:
    """The same study as ``ct_case`` or ``brain_case`` (``kind``), the expert having found nothing: no segmentation,
    no score."""
    case = {"ct": ct_case, "brain": brain_case}[kind](demo=demo)
    findings = case.content.findings
    nothing = ExpertFindings(findings.algorithm, findings.source_images, other_evidence=findings.other_evidence)
    narrative = Narrative(case.content.narrative.question, "No abnormality is seen.")
    content = DraftReportContent(nothing, narrative, case.content.model, institution_name=case.content.institution_name)
    uids = ResultUids(ORG_ROOT, case.study.study_instance_uid, f"run-{kind}-nothing")
    return ResultCase(case.study, content, uids, None)
