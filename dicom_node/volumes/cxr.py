"""Chest radiographs -> the 8-bit frontal image the CXR expert and the VLM take.

The pixel pipeline is the DICOM grayscale pipeline: stored values -> modality LUT (Rescale Slope/Intercept or a
Modality LUT Sequence; pydicom ``apply_modality_lut``) -> VOI LUT (the first window, or the first VOI LUT Sequence
item when present, which wins; pydicom ``apply_voi_lut``) -> 0..255. The VOI output is scaled from its full output
range (for a window, pydicom's output range for the image's bit depth and rescale; for a LUT, the LUT's smallest to
largest entry); with no VOI transform the image's own min..max is used. MONOCHROME1 (or a Presentation LUT Shape
INVERSE) is then inverted once, so the result is always MONOCHROME2: (H, W) uint8, bright = dense.

When a study has several images the frontal one is chosen: ViewPosition PA first, then AP; laterals and images
without a ViewPosition are never chosen. Among several of the preferred view the first by (SeriesNumber,
InstanceNumber) is taken. A study with no PA/AP image raises ``NoFrontalViewError``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from dicom_node.volumes.errors import NoFrontalViewError, VolumeError

__all__ = ["FRONTAL_VIEWS", "Radiograph", "choose_frontal_view", "frontal_radiograph", "radiograph_to_uint8"]

LOGGER = logging.getLogger(__name__)

#: ViewPosition values accepted as frontal, in order of preference.
FRONTAL_VIEWS: tuple[str, ...] = ("PA", "AP")


@dataclass(frozen=True)
class Radiograph:
    """The chosen radiograph: ``image`` (H, W) uint8 MONOCHROME2, and which instance it came from."""

    image: np.ndarray
    view_position: str
    sop_instance_uid: str
    series_instance_uid: str


def _view_position(dataset: Dataset) -> str:
    return str(dataset.get("ViewPosition", "") or "").strip().upper()


def _voi_output_range(dataset: Dataset) -> tuple[float, float]:
    """The output range pydicom's ``apply_voi_lut`` maps into, for the transform it applies."""
    lut_items = dataset.get("VOILUTSequence")
    if lut_items:
        data = np.asarray(lut_items[0].LUTData, dtype=np.float64).ravel()
        return float(data.min()), float(data.max())
    modality_lut = dataset.get("ModalityLUTSequence")
    bits = int(dataset.BitsStored)
    if modality_lut:
        return 0.0, float(2 ** int(modality_lut[0].LUTDescriptor[2]) - 1)
    if int(dataset.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return min(low, high), max(low, high)


def _has_voi(dataset: Dataset) -> bool:
    return bool(dataset.get("VOILUTSequence")) or ("WindowCenter" in dataset and "WindowWidth" in dataset)


def _is_inverted(dataset: Dataset) -> bool:
    """MONOCHROME1 (low values bright), or a MONOCHROME2 image whose Presentation LUT Shape is INVERSE: invert once.

    (DX requires INVERSE with MONOCHROME1: both say the same thing, so they are not applied twice.)"""
    photometric = str(dataset.get("PhotometricInterpretation", "")).upper()
    shape = str(dataset.get("PresentationLUTShape", "") or "").upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def radiograph_to_uint8(dataset: Dataset) -> np.ndarray:
    """One single-frame grayscale radiograph -> (H, W) uint8, MONOCHROME2 (see the module docstring)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    uid = str(dataset.get("SOPInstanceUID", "?"))
    photometric = str(dataset.get("PhotometricInterpretation", "")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise VolumeError(f"radiograph {uid} is {photometric or 'of unknown photometric interpretation'}; "
                          "the CXR expert needs a grayscale (MONOCHROME1/2) image")
    if int(dataset.get("NumberOfFrames", 1) or 1) != 1:
        raise VolumeError(f"radiograph {uid} has {dataset.NumberOfFrames} frames; the CXR expert needs one image")
    values = apply_modality_lut(dataset.pixel_array, dataset).astype(np.float64)
    if _has_voi(dataset):
        low, high = _voi_output_range(dataset)
        if dataset.get("VOILUTSequence"):  # a LUT is indexed by (integer) modality values
            values = np.rint(values).astype(np.int64)
        values = apply_voi_lut(values, dataset, index=0, prefer_lut=True).astype(np.float64)
    else:
        low, high = float(values.min()), float(values.max())
    if high > low:
        scaled = (values - low) / (high - low) * 255.0
    else:
        scaled = np.zeros_like(values)
    image = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if _is_inverted(dataset):
        image = 255 - image
    return image


def choose_frontal_view(datasets: Iterable[Dataset]) -> Dataset:
    """The frontal radiograph of a study: PA preferred, then AP; raises ``NoFrontalViewError`` when none."""
    candidates = list(datasets)
    for view in FRONTAL_VIEWS:
        matching = [dataset for dataset in candidates if _view_position(dataset) == view]
        if matching:
            matching.sort(key=lambda ds: (int(ds.get("SeriesNumber", 0) or 0), int(ds.get("InstanceNumber", 0) or 0)))
            if len(matching) > 1:
                LOGGER.info("%d %s radiographs in the study; using %s", len(matching), view,
                            matching[0].get("SOPInstanceUID", "?"))
            return matching[0]
    seen = Counter(_view_position(dataset) or "no ViewPosition" for dataset in candidates)
    described = ", ".join(f"{view} ({count})" for view, count in seen.most_common()) or "no images"
    raise NoFrontalViewError(
        f"not routable: no frontal chest radiograph (ViewPosition PA or AP) in the study; views present: {described}"
    )


def frontal_radiograph(datasets: Iterable[Dataset]) -> Radiograph:
    """Choose the frontal view of a study and convert it to 8 bits."""
    chosen = choose_frontal_view(datasets)
    return Radiograph(
        image=radiograph_to_uint8(chosen),
        view_position=_view_position(chosen),
        sop_instance_uid=str(chosen.get("SOPInstanceUID", "")),
        series_instance_uid=str(chosen.get("SeriesInstanceUID", "")),
    )
