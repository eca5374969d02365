"""The SEG (and the overlay's Secondary Capture) land where the findings are: a cube of known LPS position, in a CT
and in a brain MRI whose series have a non-identity orientation and anisotropic spacing, comes out of the real plan,
prepare, report and deliver stages as SEG frames whose pixels are exactly the source pixels inside the cube.

The expected masks are computed from the source headers alone (ImagePositionPatient, ImageOrientationPatient,
PixelSpacing: pixel (row m, column n) lies at ``P + n * dc * row_cosine + m * dr * column_cosine``), never through our
volume or affine code, so the test holds every convention between DICOM, volume, expert grid and SEG to account.

TEST DOUBLES: the expert and VILA-M3 stages (random demo weights cannot be told to find a cube): the expert labels
the voxels of the grid it is given that are bright (the cube), and returns them on that grid, as every expert does.
"""

from __future__ import annotations

import numpy as np
import pydicom
from PIL import Image

from engines.experts import ExpertName, ExpertResult
from service.config import Settings
from service.db.models import Report, Study, StudyStatus
from service.db.session import session_scope
from service.pipeline.executor import StageOutcome
from service.pipeline.stages import Stage
from service.pipeline.work import build_stage_handlers
from service.pipeline.contracts import ExpertStageResult
from service.pipeline.work.resources import load_arrays, write_json
from tests.support.pipeline_study import run_inline, store_in_spool
from tests.support.synthetic_series import SeriesGeometry, SyntheticStudy, ct_series, mr_series, sample_ras

# The cube, in DICOM patient coordinates (LPS mm): edges chosen off every voxel centre.
CT_CUBE = ((-6.3, 5.1), (-4.7, 7.9), (-9.2, 6.6))
MR_CUBE = ((-4.6, 6.4), (-5.2, 4.1), (-6.3, 5.4))
OVERLAY_SLICE = 3  # the axial slice (RAS-oriented grid, counted from the feet) the model was shown


def _inside(cube, lps: np.ndarray) -> np.ndarray:
    return np.all([(lps[..., axis] > low) & (lps[..., axis] < high) for axis, (low, high) in enumerate(cube)], axis=0)


def _lps_of_ras(points: np.ndarray) -> np.ndarray:
    return points * np.array([-1.0, -1.0, 1.0])


def _expected_mask(dataset, cube) -> np.ndarray:
    """(rows, columns) True where the pixel centre of ``dataset`` lies in ``cube``: from its header only."""
    position = np.asarray(dataset.ImagePositionPatient, dtype=float)
    orientation = np.asarray(dataset.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
    rows, columns = np.mgrid[0:int(dataset.Rows), 0:int(dataset.Columns)]
    lps = (position + columns[..., None] * column_spacing * orientation[:3]
           + rows[..., None] * row_spacing * orientation[3:])
    return _inside(cube, lps)


class ExpertLabellingBrightVoxels:
    """TEST DOUBLE of the expert stage: label ``label`` where the grid it is given is brighter than ``threshold``
    (channel 0 of a multi-channel input), returned on that grid with its affine."""

    def __init__(self, resources, label: int, threshold: float) -> None:
        self.resources, self.label, self.threshold = resources, label, threshold

    def __call__(self, claim) -> StageOutcome:
        arrays = load_arrays(claim.results["prepare"]["input"])
        volume = arrays["volume"] if arrays["volume"].ndim == 3 else arrays["volume"][0]
        labels = np.where(volume > self.threshold, self.label, 0).astype(np.uint8)
        name = ExpertName(claim.route["expert"])
        result = ExpertResult(expert=name, argument=claim.route.get("argument"), backend="onnxruntime-cpu",
                              model_version="0.5.4", demo=False, label_volume=labels, affine=arrays["affine"],
                              label_names={self.label: "liver" if name is ExpertName.VISTA3D else "enhancing tumor"},
                              volumes_ml={"liver": 1.0} if name is ExpertName.VISTA3D else {"TC": 1.0, "WT": 1.0,
                                                                                             "ET": 1.0})
        path = self.resources.work_dir(claim.study_uid, claim.run_id) / "labels.npz"
        return StageOutcome(result=ExpertStageResult.from_expert_result(result, path, "sha256:" + "cd" * 32,
                                                                         elapsed_s=0.1))


class ModelShowingAnOverlay:
    """TEST DOUBLE of the VLM stage: one consultation, an overlay image of axial slice ``OVERLAY_SLICE``."""

    def __init__(self, resources) -> None:
        self.resources = resources

    def __call__(self, claim) -> StageOutcome:
        question = claim.route["questions"][0]
        folder = self.resources.work_dir(claim.study_uid, claim.run_id)
        transcript = {"question": question, "outcome": "answered", "final_answer": "A cube.", "turns": [],
                      "expert_call": None}
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 128, dtype=np.uint8), mode="RGB").save(folder / "overlay.png")
        return StageOutcome(result={
            "transcripts": write_json(folder / "transcripts.json", [transcript]), "questions": [question],
            "answers": ["A cube."], "outcomes": ["answered"], "overlay_png": str(folder / "overlay.png"),
            "overlay_source": "shown to the model", "overlay_slice": OVERLAY_SLICE, "model_s": 0.1,
            "model": {"name": "VILA-M3 demo", "version": "demo", "backend": "torch-cpu",
                      "weights_digest": "sha256:" + "ab" * 32, "demo": False},
        })


def _oblique_ct() -> tuple[list, SeriesGeometry]:
    """Axial, rotated 20 degrees in plane, columns and rows flipped, slices stacked towards the feet; 0.7 x 0.9 mm
    pixels, 2 mm slices."""
    angle = np.radians(20.0)
    c, s = float(np.cos(angle)), float(np.sin(angle))
    geometry = SeriesGeometry(40, 36, 14, origin=(17.5, -12.3, 13.0), row_cosine=(-c, -s, 0.0),
                              column_cosine=(-s, c, 0.0), pixel_spacing=(0.9, 0.7), slice_spacing=2.0)
    assert geometry.normal[2] < 0  # slices run towards the feet

    def body(points: np.ndarray) -> np.ndarray:
        x, y = points[..., 0], points[..., 1]
        hu = np.where(x ** 2 + y ** 2 < 16.0 ** 2, 40.0, -1000.0)
        return np.where(_inside(CT_CUBE, _lps_of_ras(points)), 300.0, hu)

    study = SyntheticStudy(patient_id="M3E-GEOMCT", patient_name="Phantom^GeomCT")
    series = ct_series(sample_ras(geometry, body), geometry, study=study, description="CT ABDOMEN 2mm")
    for dataset in series:
        dataset.BodyPartExamined = "ABDOMEN"
        dataset.StudyDescription = "CT ABDOMEN"
    return series, geometry


def _coronal_brain() -> list:
    """T1c coronal: columns to the patient's right (2 mm), rows to the feet (1 mm), 11 slices of 3 mm running anterior;
    T1, T2 and FLAIR on other grids of the same frame of reference. Integer spacings put every T1c voxel centre on
    the BraTS 1 mm grid, so the expert's input holds the T1c's own values there."""
    def head(points: np.ndarray) -> np.ndarray:
        brain = np.where(np.sum(points ** 2, axis=-1) < 17.0 ** 2, 400.0, 0.0)
        return np.where(_inside(MR_CUBE, _lps_of_ras(points)), 900.0, brain)

    grids = [
        SeriesGeometry(36, 20, 11, origin=(20.0, 15.0, 20.0), row_cosine=(-1.0, 0.0, 0.0),
                       column_cosine=(0.0, 0.0, -1.0), pixel_spacing=(1.0, 2.0), slice_spacing=3.0),
        SeriesGeometry(40, 36, 8, origin=(-18.0, -20.0, -17.0), pixel_spacing=(1.0, 1.0), slice_spacing=5.0),
        SeriesGeometry(45, 40, 10, origin=(-18.0, -20.0, -17.5), pixel_spacing=(0.9, 0.9), slice_spacing=4.0),
        SeriesGeometry(28, 34, 30, origin=(17.0, -20.0, 16.0), row_cosine=(0.0, 1.0, 0.0),
                       column_cosine=(0.0, 0.0, -1.0), pixel_spacing=(1.2, 1.2), slice_spacing=1.2),
    ]
    study = SyntheticStudy(patient_id="M3E-GEOMMR", patient_name="Phantom^GeomMR")
    datasets = []
    for number, (description, geometry) in enumerate(zip(("T1 post contrast", "T1", "T2", "FLAIR"), grids)):
        series = mr_series(np.clip(sample_ras(geometry, head), 0, None), geometry, study=study,
                           description=description, series_number=number + 1)
        for dataset in series:
            dataset.BodyPartExamined = "HEAD"
            dataset.StudyDescription = "MRI BRAIN W/WO"
        datasets += series
    return datasets


def _run(settings, session_factory, datasets, label: int, threshold: float):
    handlers = build_stage_handlers(settings, session_factory)
    resources = handlers[Stage.REPORT].resources
    handlers[Stage.EXPERT] = ExpertLabellingBrightVoxels(resources, label, threshold)
    handlers[Stage.VLM] = ModelShowingAnOverlay(resources)
    uid = store_in_spool(settings, session_factory, datasets)
    outcomes = run_inline(settings, session_factory, uid, handlers).outcomes
    assert outcomes[-1] == ("deliver", "done"), outcomes
    with session_scope(session_factory) as session:
        assert session.query(Study).one().status is StudyStatus.DONE
        return dict(session.query(Report).one().objects)


def _seg_masks(path) -> dict[tuple[str, int], tuple[np.ndarray, tuple[float, ...]]]:
    """(source SOP Instance UID, segment number) -> (frame mask, the frame's ImagePositionPatient)."""
    seg = pydicom.dcmread(path)
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    shared = seg.SharedFunctionalGroupsSequence[0]
    masks = {}
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        identification = item if "SegmentIdentificationSequence" in item else shared  # one segment: shared
        segment = int(identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = tuple(float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient)
        masks[(str(source), segment)] = (pixels[index].astype(bool), position)
    return masks


def _assert_seg_matches(path, sources, cube, segments: tuple[int, ...]) -> None:
    masks = _seg_masks(path)
    expected = {str(ds.SOPInstanceUID): _expected_mask(ds, cube) for ds in sources}
    assert sum(mask.sum() for mask in expected.values()) > 50  # the cube is really there
    with_cube = {uid for uid, mask in expected.items() if mask.any()}
    for segment in segments:
        framed = {uid for uid, number in masks if number == segment}
        assert framed == with_cube, f"segment {segment}: frames on the wrong source images"
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    for (uid, segment), (mask, position) in masks.items():
        assert segment in segments
        np.testing.assert_array_equal(mask, expected[uid], err_msg=f"segment {segment} on source {uid}")
        np.testing.assert_allclose(position, [float(v) for v in by_uid[uid].ImagePositionPatient], atol=1e-3)


def _overlay_source(objects) -> str:
    capture = pydicom.dcmread(objects["overlay"]["path"])
    return str(capture.SourceImageSequence[0].ReferencedSOPInstanceUID)


def _slice_from_feet(sources, index: int) -> str:
    """The source image ``index`` slices up from the feet (ImagePositionPatient z, LPS S is RAS S)."""
    ordered = sorted(sources, key=lambda ds: float(ds.ImagePositionPatient[2]))
    return str(ordered[index].SOPInstanceUID)


def test_a_ct_cube_lands_on_its_source_pixels_in_the_seg_and_the_overlay_names_its_slice(tmp_path, database_url,
                                                                                          session_factory):
    settings = Settings(home=tmp_path, database_url=database_url)
    series, _ = _oblique_ct()
    objects = _run(settings, session_factory, series, label=1, threshold=150.0)
    _assert_seg_matches(objects["seg"]["path"], series, CT_CUBE, segments=(1,))
    assert _overlay_source(objects) == _slice_from_feet(series, OVERLAY_SLICE)


def test_a_brain_mri_cube_lands_on_the_t1c_source_pixels_in_every_tumour_segment(tmp_path, database_url,
                                                                                  session_factory):
    settings = Settings(home=tmp_path, database_url=database_url)
    datasets = _coronal_brain()
    objects = _run(settings, session_factory, datasets, label=4, threshold=650.0)
    t1c = [ds for ds in datasets if ds.SeriesDescription == "T1 post contrast"]
    _assert_seg_matches(objects["seg"]["path"], t1c, MR_CUBE, segments=(1, 2, 3))
    # an axial slice of the RAS-oriented 1 mm grid: its centre (LPS y = 0, the middle of the T1c's extent) lies on
    # the T1c's coronal slice at y = 0
    middle = next(ds for ds in t1c if abs(float(ds.ImagePositionPatient[1])) < 1e-6)
    assert _overlay_source(objects) == str(middle.SOPInstanceUID)
