"""The three study types the pipeline serves, small enough for the demo models to run in seconds on a CPU, and the
demo models themselves with small sliding windows.

- CT: 48 x 48 x 24 axial (0.8 mm pixels, 2.5 mm slices), a body with a liver-like and a kidney-like blob (HU);
- chest X-ray: one 256 x 256 DX PA radiograph (12-bit);
- brain MRI: T1c, T1, T2, FLAIR on four different grids in one frame of reference, a bright lesion in a brain.

``small_demo_models(directory)`` writes what ``m3edge models demo`` writes (the same formats and writers) but with a
64^3 VISTA3D patch and a 64^3 BraTS window instead of 128^3 and 240 x 240 x 160: the tiny studies then need one window
each and the models run in a second or two instead of twenty.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from tests.support.synthetic_series import (
    SyntheticStudy,
    axial_geometry,
    brain_mri_study,
    ct_series,
    cxr_dataset,
    sample_ras,
)

__all__ = ["small_demo_models", "ct_study", "cxr_study", "brain_study", "store_in_spool", "InlineDispatcher",
           "run_inline", "STUDY_KINDS"]

STUDY_KINDS = ("ct", "cxr", "mri")


def small_demo_models(models_dir: Path) -> Path:
    from engines.model_store.demo import write_brats_demo, write_cxr_demo, write_vila_demo, write_vista3d_demo
    from engines.model_store.layout import ModelsDirectory

    layout = ModelsDirectory(Path(models_dir))
    layout.root.mkdir(parents=True, exist_ok=True)
    write_vista3d_demo(layout.vista3d, patch_size=(64, 64, 64))
    write_brats_demo(layout.brats, roi_size=(64, 64, 64))
    write_cxr_demo(layout.cxr)
    write_vila_demo(layout)
    return layout.root


def _study(name: str) -> SyntheticStudy:
    return SyntheticStudy(patient_id=f"M3E-{name}", patient_name=f"Phantom^{name}", accession_number=f"ACC-{name}")


def ct_study() -> list[Dataset]:
    geometry = axial_geometry(48, 48, 24, pixel_spacing=(0.8, 0.8), slice_spacing=2.5, origin=(-19.0, -19.0, -30.0))

    def body(points: np.ndarray) -> np.ndarray:
        x, y, z = points[..., 0], points[..., 1], points[..., 2]
        hu = np.where(x ** 2 + y ** 2 < 17.0 ** 2, 40.0, -1000.0)
        hu = np.where((x + 6) ** 2 + (y - 3) ** 2 + z ** 2 < 8.0 ** 2, 60.0, hu)
        return np.where((x - 8) ** 2 + (y + 6) ** 2 + (z - 5) ** 2 < 4.0 ** 2, 150.0, hu)

    study = _study("CT")
    series = ct_series(sample_ras(geometry, body), geometry, study=study, description="CT ABDOMEN 2.5mm")
    for dataset in series:
        dataset.BodyPartExamined = "ABDOMEN"
        dataset.StudyDescription = "CT ABDOMEN"
    return series


def cxr_study() -> list[Dataset]:
    rows, columns = np.mgrid[0:256, 0:256]
    lungs = ((rows - 128) ** 2 / 90 ** 2 + (np.abs(columns - 128) - 55) ** 2 / 40 ** 2) < 1
    image = np.where(lungs, 900, 2600) + (rows * 3)
    dataset = cxr_dataset(image.astype(np.uint16), view_position="PA", study=_study("CXR"), window=(2048, 4096))
    dataset.StudyDescription = "CHEST PA"
    return [dataset]


def brain_study() -> list[Dataset]:
    def head(points: np.ndarray) -> np.ndarray:
        x, y, z = points[..., 0], points[..., 1], points[..., 2]
        brain = np.where(x ** 2 + y ** 2 + z ** 2 < 15.0 ** 2, 400.0, 0.0)
        return np.where((x - 4) ** 2 + (y - 2) ** 2 + z ** 2 < 5.0 ** 2, 900.0, brain)

    series = brain_mri_study(head, study=_study("MR"))
    datasets = [dataset for each in series.values() for dataset in each]
    for dataset in datasets:
        dataset.BodyPartExamined = "HEAD"
        dataset.StudyDescription = "MRI BRAIN W/WO"
    return datasets


def store_in_spool(settings, session_factory, datasets: list[Dataset], status: str = "complete") -> str:
    """Put a study where the DICOM node would have put it (spool files + database rows); returns its UID."""
    from service.db.models import Instance, Series, Study, StudyStatus
    from service.db.session import session_scope

    study_uid = str(datasets[0].StudyInstanceUID)
    now = datetime.now(timezone.utc)
    with session_scope(session_factory) as session:
        study = Study(study_uid=study_uid, status=StudyStatus(status), completed_at=now, completion_count=1,
                      modalities="\\".join(sorted({str(d.Modality) for d in datasets})))
        session.add(study)
        series_rows: dict[str, Series] = {}
        for dataset in datasets:
            series_uid = str(dataset.SeriesInstanceUID)
            if series_uid not in series_rows:
                series_rows[series_uid] = Series(series_uid=series_uid, modality=str(dataset.Modality),
                                                 series_description=str(dataset.get("SeriesDescription", "")))
                study.series.append(series_rows[series_uid])
            relative = f"{study_uid}/{series_uid}/{dataset.SOPInstanceUID}.dcm"
            path = Path(settings.spool_dir) / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            dataset.save_as(path, enforce_file_format=True)
            content = path.read_bytes()
            series_rows[series_uid].instances.append(Instance(
                sop_instance_uid=str(dataset.SOPInstanceUID), sop_class_uid=str(dataset.SOPClassUID),
                transfer_syntax_uid=str(dataset.file_meta.TransferSyntaxUID), path=relative, size_bytes=len(content),
                digest=hashlib.sha256(content).hexdigest()))
    return study_uid


class InlineDispatcher:
    """Takes the stages the executor sends, for ``run_inline`` to run in this process in order, each when its
    countdown (a retry's back-off) has passed: the executor's contract without a broker."""

    def __init__(self) -> None:
        self.pending: list = []  # (when it is due on the monotonic clock, ticket), in the order sent
        self.outcomes: list[tuple[str, str]] = []

    def dispatch(self, ticket, countdown: float = 0) -> bool:
        self.pending.append((time.monotonic() + (countdown or 0), ticket))
        return True

    def next_due(self):
        """The first ticket due, once it is due (a broker holds a message with a countdown until then)."""
        entry = min(self.pending, key=lambda pending: pending[0])
        self.pending.remove(entry)
        time.sleep(max(0.0, entry[0] - time.monotonic()))
        return entry[1]

    def deliver(self, run_id: int) -> bool:
        return True


def run_inline(settings, session_factory, study_uid: str, handlers=None) -> InlineDispatcher:
    """A run for the completed study, every stage executed here by the real executor and handlers, until it ends."""
    from service.pipeline.executor import StageExecutor
    from service.pipeline.ledger import PipelineLedger
    from service.pipeline.work import build_stage_handlers

    ledger = PipelineLedger(session_factory)
    dispatcher = InlineDispatcher()
    executor = StageExecutor(ledger, handlers or build_stage_handlers(settings, session_factory), dispatcher)
    dispatcher.dispatch(ledger.next_ticket(ledger.start_run(study_uid)))
    while dispatcher.pending:
        ticket = dispatcher.next_due()
        dispatcher.outcomes.append((ticket.stage.value, executor.execute(ticket.run_id, ticket.stage)))
    return dispatcher
