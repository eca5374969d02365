"""The built-in routing rules on the studies a hospital really sends, through the real stage handlers.

Negative cases never get a draft: pydicom's tibia CR (``RG3_UNCR.dcm``), its head CT (``J2K_pixelrep_mismatch.dcm``)
and shoulder MR (``MR2_UNCR.dcm``), and real-looking C-spine DX and knee MR studies built here (the knee MR has
sequences named like BraTS', FLAIR included). Each run ends ``skipped`` in ``plan`` with the anatomy test that failed,
with no report and nothing written. Positive cases get a draft: pydicom's chest CR (``RG1_UNCR.dcm``) filed in one
study with an extremity CR PA (only the chest image reaches the expert), a chest/abdomen CT and a four-sequence brain MR
(the small demo models).
"""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select

from service.config import Settings
from service.db.models import Report, Study, StudyStatus
from service.db.session import session_scope
from tests.conftest import sqlite_only_database
from tests.support.pipeline_study import brain_study, ct_study, run_inline, store_in_spool
from tests.support.synthetic_series import SyntheticStudy, cxr_dataset, mr_series, sagittal_geometry


def _real(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file(name))


def _cspine_dx() -> list[pydicom.Dataset]:
    dataset = cxr_dataset(np.full((64, 64), 1800, dtype=np.uint16), view_position="AP")
    dataset.BodyPartExamined = "CSPINE"
    dataset.SeriesDescription = "C-SPINE AP"
    dataset.StudyDescription = "XR CERVICAL SPINE 2 VIEWS"
    del dataset.AnatomicRegionSequence
    return [dataset]


def _knee_mr() -> list[pydicom.Dataset]:
    study = SyntheticStudy()
    datasets = []
    for number, description in enumerate(("SAG T1", "SAG T1 POST GD", "COR T2 FS", "SAG PD FLAIR"), start=1):
        geometry = sagittal_geometry(24, 24, 6, pixel_spacing=(0.5, 0.5), slice_spacing=3.0)
        series = mr_series(np.full(geometry.shape, 300.0), geometry, study=study, description=description,
                           series_number=number)
        for dataset in series:
            dataset.BodyPartExamined = "KNEE"
            dataset.StudyDescription = "MR KNEE RIGHT"
        datasets += series
    return datasets


NEGATIVES = {
    "tibia CR (RG3_UNCR.dcm)": (lambda: [_real("RG3_UNCR.dcm")], "BodyPartExamined 'EXTREMITY' is not chest"),
    "head CT (J2K_pixelrep_mismatch.dcm)": (lambda: [_real("J2K_pixelrep_mismatch.dcm")],
                                            "BodyPartExamined 'HEAD' is not torso"),
    "shoulder MR (MR2_UNCR.dcm)": (lambda: [_real("MR2_UNCR.dcm")], "no evidence of brain"),
    "C-spine DX": (_cspine_dx, "SeriesDescription 'C-SPINE AP' names another body part than chest"),
    "knee MR with BraTS-like sequence names": (_knee_mr, "BodyPartExamined 'KNEE' is not brain"),
}


@pytest.mark.parametrize("name", NEGATIVES)
def test_a_study_of_another_body_part_never_gets_a_draft(name, tmp_path, database_url, session_factory):
    make, reason = NEGATIVES[name]
    settings = Settings(home=tmp_path, database_url=database_url)
    uid = store_in_spool(settings, session_factory, make())
    assert run_inline(settings, session_factory, uid).outcomes == [("plan", "skipped")]
    with session_scope(session_factory) as session:
        study = session.scalar(select(Study).where(Study.study_uid == uid))
        assert study.status is StudyStatus.SKIPPED
        assert "no routing rule matched" in study.error and reason in study.error, study.error
        assert session.scalars(select(Report)).all() == []
    assert not (settings.results_dir / uid).exists()


def _chest_beside_a_forearm() -> list[pydicom.Dataset]:
    """pydicom's chest CR PA and, in the same study and patient, an extremity CR PA filed first (pydicom's tibia
    radiograph relabelled): by view and order alone the extremity would be the frontal image."""
    chest = _real("RG1_UNCR.dcm")
    forearm = _real("RG3_UNCR.dcm")
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate",
                    "StudyTime", "AccessionNumber", "StudyID", "StudyDescription"):
        if keyword in chest:
            forearm[keyword] = copy.deepcopy(chest[keyword])
        elif keyword in forearm:
            del forearm[keyword]
    forearm.SeriesInstanceUID, forearm.SOPInstanceUID = generate_uid(), generate_uid()
    forearm.ViewPosition, forearm.SeriesNumber, chest.SeriesNumber = "PA", 1, 2
    forearm.file_meta.MediaStorageSOPInstanceUID = forearm.SOPInstanceUID
    return [forearm, chest]


def _chest_abdomen_ct() -> list[pydicom.Dataset]:
    datasets = ct_study()
    for dataset in datasets:
        dataset.BodyPartExamined = "CHESTABDPELVIS"
        dataset.StudyDescription = "CT CHEST ABDOMEN PELVIS W"
    return datasets


POSITIVES = {
    "chest CR beside a forearm CR": (_chest_beside_a_forearm, "CXR"),
    "chest/abdomen CT": (_chest_abdomen_ct, "VISTA3D"),
    "four-sequence brain MR": (brain_study, "BRATS"),
}


@pytest.fixture(scope="module")
def migrated_database_url(tmp_path_factory) -> str:
    return sqlite_only_database(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("name", POSITIVES)
def test_a_study_of_the_experts_anatomy_gets_a_draft_from_those_series_only(name, tmp_path, database_url,
                                                                          session_factory, small_demo_models_dir):
    make, expert = POSITIVES[name]
    (tmp_path / "models").symlink_to(small_demo_models_dir, target_is_directory=True)
    settings = Settings(home=tmp_path, database_url=database_url, vlm_max_new_tokens=12)
    datasets = make()
    uid = store_in_spool(settings, session_factory, datasets)
    outcomes = run_inline(settings, session_factory, uid).outcomes
    assert outcomes[-1] == ("deliver", "done"), outcomes
    with session_scope(session_factory) as session:
        report = session.scalars(select(Report)).one()
        sr = pydicom.dcmread(report.objects["sr"]["path"])
        assert report.findings["expert"] == expert and report.status.value == "draft"
    evidence = {str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
    shown = {str(d.SOPInstanceUID) for d in datasets if str(d.get("BodyPartExamined", "")) != "EXTREMITY"}
    assert shown <= evidence | {str(d.SOPInstanceUID) for d in datasets if d.Modality == "MR"}
    assert not {str(d.SOPInstanceUID) for d in datasets if str(d.get("BodyPartExamined", "")) == "EXTREMITY"} \
        & evidence  # the forearm never reached the expert


def test_a_blank_chest_radiograph_is_skipped_in_prepare_before_any_model_runs(tmp_path, database_url,
                                                                             session_factory):
    settings = Settings(home=tmp_path, database_url=database_url)
    uid = store_in_spool(settings, session_factory, [cxr_dataset(np.full((64, 64), 700, dtype=np.uint16))])
    assert run_inline(settings, session_factory, uid).outcomes == [("plan", "done"), ("prepare", "skipped")]
    with session_scope(session_factory) as session:
        study = session.scalar(select(Study).where(Study.study_uid == uid))
        assert study.status is StudyStatus.SKIPPED and "the CXR input holds one value only" in study.error
        assert session.scalars(select(Report)).all() == []
