"""Enhanced multi-frame CT and MR through the real stage handlers: read as a volume in ``prepare``, its SEG, overlay SC and SR
written against its frames (dciodvfy clean); what is still not one volume is refused in ``prepare`` with the reason,
before any model runs.

The enhanced instances are Legacy Converted Enhanced CT and MR, built by highdicom from the small chest/abdomen CT and
the four-sequence brain MR; the models are the small demo models.
"""

from __future__ import annotations

import copy
import subprocess

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from service.config import Settings
from service.db.models import Report, StageRun, StageStatus, Study, StudyStatus
from service.db.session import session_scope
from tests.conftest import require_tool, sqlite_only_database
from tests.support.pipeline_study import brain_study, ct_study, run_inline, store_in_spool
from tests.support.synthetic_series import enhanced_series


def _enhanced_chest_ct() -> pydicom.Dataset:
    slices = ct_study()
    enhanced = enhanced_series(slices)
    enhanced.BodyPartExamined = "CHESTABDPELVIS"
    enhanced.StudyDescription = "CT CHEST ABDOMEN PELVIS"
    return enhanced


def _errors(path) -> list[str]:
    result = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def migrated_database_url(tmp_path_factory) -> str:
    return sqlite_only_database(tmp_path_factory)


@pytest.mark.slow
def test_an_enhanced_ct_gets_a_draft_whose_seg_and_overlay_lie_on_its_frames(tmp_path, database_url,
                                                                             session_factory, small_demo_models_dir):
    (tmp_path / "models").symlink_to(small_demo_models_dir, target_is_directory=True)
    settings = Settings(home=tmp_path, database_url=database_url, vlm_max_new_tokens=12)
    enhanced = _enhanced_chest_ct()
    uid = store_in_spool(settings, session_factory, [enhanced])
    outcomes = run_inline(settings, session_factory, uid).outcomes
    assert outcomes[-1] == ("deliver", "done"), outcomes
    with session_scope(session_factory) as session:
        objects = session.scalars(select(Report)).one().objects
    seg = pydicom.dcmread(objects["seg"]["path"])
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert [r.ReferencedSOPInstanceUID for r in referenced] == [enhanced.SOPInstanceUID]
    frames = {int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
              for item in seg.PerFrameFunctionalGroupsSequence}
    assert frames and frames <= set(range(1, int(enhanced.NumberOfFrames) + 1))
    overlay = pydicom.dcmread(objects["overlay"]["path"])
    source = overlay.SourceImageSequence[0]
    assert source.ReferencedSOPInstanceUID == enhanced.SOPInstanceUID
    assert 1 <= int(source.ReferencedFrameNumber) <= int(enhanced.NumberOfFrames)
    sr = pydicom.dcmread(objects["sr"]["path"])
    evidence = {str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
    assert evidence == {enhanced.SOPInstanceUID, seg.SOPInstanceUID}
    for kind in ("sr", "seg", "overlay"):
        assert _errors(objects[kind]["path"]) == [], kind


def _enhanced_brain_mr() -> list[pydicom.Dataset]:
    """Each of the four brain MR sequences as one Legacy Converted Enhanced MR instance, as a modern scanner sends."""
    by_series: dict[str, list[pydicom.Dataset]] = {}
    for dataset in brain_study():
        by_series.setdefault(str(dataset.SeriesInstanceUID), []).append(dataset)
    enhanced = []
    for number, slices in enumerate(by_series.values(), start=1):
        instance = enhanced_series(slices, series_number=number)
        instance.SeriesDescription = slices[0].SeriesDescription
        instance.BodyPartExamined = "HEAD"
        instance.StudyDescription = "MRI BRAIN W/WO"
        enhanced.append(instance)
    return enhanced


@pytest.mark.slow
def test_an_enhanced_brain_mr_gets_a_draft_whose_seg_lies_on_its_frames(tmp_path, database_url, session_factory,
                                                                        small_demo_models_dir):
    (tmp_path / "models").symlink_to(small_demo_models_dir, target_is_directory=True)
    settings = Settings(home=tmp_path, database_url=database_url, vlm_max_new_tokens=12)
    enhanced = _enhanced_brain_mr()
    uid = store_in_spool(settings, session_factory, enhanced)
    outcomes = run_inline(settings, session_factory, uid).outcomes
    assert outcomes[-1] == ("deliver", "done"), outcomes
    with session_scope(session_factory) as session:
        report = session.scalars(select(Report)).one()
        objects, expert = report.objects, report.findings["expert"]
    assert expert == "BRATS"
    ours = {str(d.SOPInstanceUID): int(d.NumberOfFrames) for d in enhanced}
    seg = pydicom.dcmread(objects["seg"]["path"])
    referenced = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
                  for r in s.ReferencedInstanceSequence}
    assert referenced and referenced <= set(ours)
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert 1 <= int(source.ReferencedFrameNumber) <= ours[source.ReferencedSOPInstanceUID]
    sr = pydicom.dcmread(objects["sr"]["path"])
    evidence = {str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
    assert referenced | {seg.SOPInstanceUID} <= evidence
    for kind in ("sr", "seg", "overlay"):
        assert _errors(objects[kind]["path"]) == [], kind


def _without_plane_positions() -> list[pydicom.Dataset]:
    enhanced = _enhanced_chest_ct()
    for item in enhanced.PerFrameFunctionalGroupsSequence:
        del item.PlanePositionSequence
    return [enhanced]


def _two_enhanced_instances() -> list[pydicom.Dataset]:
    first = _enhanced_chest_ct()
    second = copy.deepcopy(first)
    second.SOPInstanceUID = generate_uid()
    second.file_meta.MediaStorageSOPInstanceUID = second.SOPInstanceUID
    return [first, second]


def _two_stacks_in_one_instance() -> list[pydicom.Dataset]:
    """Two acquisitions (say arterial and venous) in one enhanced instance: the same positions twice."""
    slices = ct_study()
    twice = slices + [copy.deepcopy(d) for d in slices]
    for dataset in twice[len(slices):]:
        dataset.SOPInstanceUID = generate_uid()
        dataset.AcquisitionNumber = 2
    enhanced = enhanced_series(twice)
    enhanced.BodyPartExamined = "CHEST"
    return [enhanced]


UNSUPPORTED = {
    "no plane positions": (_without_plane_positions, "has no ImagePositionPatient"),
    "two enhanced instances in one series": (_two_enhanced_instances,
                                             "a multi-frame volume must be the only image of its series"),
    "two stacks in one instance": (_two_stacks_in_one_instance, "several stacks (phases, echoes, repeats)"),
}


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_an_enhanced_ct_that_is_not_one_volume_is_refused_in_prepare_before_any_model_runs(
        name, tmp_path, database_url, session_factory):
    make, reason = UNSUPPORTED[name]
    settings = Settings(home=tmp_path, database_url=database_url)
    uid = store_in_spool(settings, session_factory, make())
    assert run_inline(settings, session_factory, uid).outcomes == [("plan", "done"), ("prepare", "failed")]
    with session_scope(session_factory) as session:
        study = session.scalar(select(Study).where(Study.study_uid == uid))
        assert study.status is StudyStatus.FAILED and study.error.startswith("prepare: ") and reason in study.error
        expert = session.scalar(select(StageRun).where(StageRun.stage == "expert"))
        assert expert.attempts == 0 and expert.status is not StageStatus.DONE
