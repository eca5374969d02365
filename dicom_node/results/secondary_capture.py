"""Optional Secondary Capture of the overlay image the model saw, for viewers that cannot show SEG.

The overlay is the protocol's RGB uint8 slice (``label2rgb`` over the windowed slice). Its orientation is the
protocol's display of an axial RAS slice, ``rot90(swapaxes(s, 0, 1), 2)``: columns run to the patient's left and rows
to posterior, so the default Patient Orientation is (L, P); pass another when the image was made differently.
"""

from __future__ import annotations

import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicom_node.results.content import AlgorithmIdentity
from dicom_node.results.equipment import algorithm_equipment, describe_algorithm
from dicom_node.results.uids import ResultKind, ResultUids, SeriesNumber

__all__ = ["build_overlay_capture", "AXIAL_DISPLAY_ORIENTATION"]

AXIAL_DISPLAY_ORIENTATION = ("L", "P")


def build_overlay_capture(
    overlay: np.ndarray,
    source_image: Dataset,
    algorithm: AlgorithmIdentity,
    uids: ResultUids,
    *,
    patient_orientation: tuple[str, str] = AXIAL_DISPLAY_ORIENTATION,
    index: int = 0,
    now: datetime.datetime | None = None,
    demo_run: bool = False,
    frame_number: int | None = None,
) -> hd.sc.SCImage:
    """The overlay (rows, columns, 3) RGB uint8 as an SC image in the source study, referencing the source slice
    (``frame_number``: the frame of an enhanced multi-frame source instance).

    It says DEMO (series description, image comments) when the expert ran DEMO weights or ``demo_run`` (another
    model of the run did)."""
    if not isinstance(overlay, np.ndarray) or overlay.ndim != 3 or overlay.shape[2] != 3:
        raise ValueError("overlay must be a numpy array of shape (rows, columns, 3): the RGB image the model saw")
    if overlay.dtype != np.uint8:
        raise TypeError(f"overlay must be uint8 RGB, got dtype {overlay.dtype}")
    if not isinstance(source_image, Dataset) or "SOPInstanceUID" not in source_image:
        raise TypeError("source_image must be the pydicom Dataset of the source slice the overlay shows")
    if not isinstance(algorithm, AlgorithmIdentity):
        raise TypeError("algorithm must be the AlgorithmIdentity of the expert whose labels are drawn")
    if not isinstance(uids, ResultUids) or uids.study_instance_uid != source_image.StudyInstanceUID:
        raise ValueError("uids must be a ResultUids made for the source image's study")
    frames = int(source_image.get("NumberOfFrames", 1) or 1)
    if frame_number is not None and (isinstance(frame_number, bool) or not isinstance(frame_number, int)
                                     or not 1 <= frame_number <= frames):
        raise ValueError(f"frame_number must be a frame of the source image (1..{frames}), got {frame_number!r}")
    now = now or datetime.datetime.now()
    demo = " DEMO" if algorithm.demo or demo_run else ""
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source_image,
        pixel_array=np.ascontiguousarray(overlay),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=uids.series_uid(ResultKind.OVERLAY, index),
        series_number=int(SeriesNumber.OVERLAY) + index,
        sop_instance_uid=uids.instance_uid(ResultKind.OVERLAY, index),
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        patient_orientation=patient_orientation,
        series_description=f"AI DRAFT overlay {algorithm.name}{demo}"[:64],
        contributing_equipment=[algorithm_equipment(algorithm, uids, now)],
        content_date=now.date(),
        content_time=now.time(),
    )
    image.copy_patient_and_study_information(source_image)
    image.Laterality = source_image.get("Laterality", "")  # General Series: Type 2C, empty when unknown
    image.BurnedInAnnotation = "NO"
    image.ImageComments = (
        ("DEMO (random weights, meaningless). " if demo else "")
        + f"AI-generated DRAFT overlay for a qualified reader, not a diagnosis: {describe_algorithm(algorithm)}"
    )[:10240]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source_image.SOPClassUID
    reference.ReferencedSOPInstanceUID = source_image.SOPInstanceUID
    if frame_number is not None:
        reference.ReferencedFrameNumber = frame_number
    image.SourceImageSequence = [reference]
    image.DerivationDescription = "Expert labels drawn over the windowed source slice"
    return image
