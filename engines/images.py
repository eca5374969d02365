"""The 2D images the VLM sees, and the expert overlay drawn over them (protocol sections 5 and 6).

Display orientation. A volume is first reoriented to RAS (``engines.resample.reorient_to_ras``); the axial slice
``k`` (``k`` counts from inferior to superior on that RAS grid) is ``volume[:, :, k]`` with axes (R, A), and is shown
as ``rot90(swapaxes(slice, 0, 1), 2)``, exactly as the reference training data. The result is the radiological
convention: image row 0 is the most anterior row (top = anterior), image column 0 is the patient's far right
(the patient's right appears on the viewer's left). So a structure in the patient's right-anterior quadrant appears
in the top-left quadrant of the image.

Intensities, as in training:

- CT: window W400/L50 (``a_min=-150, a_max=250`` -> 0..255, clipped), computed in float32;
- MRI: min-max over the whole volume to 0..255;
- then truncation to uint8 (``astype(np.uint8)``, as the reference does), and the grey slice repeated to 3 channels.

The overlay is scikit-image ``label2rgb(label_slice, colors=OVERLAY_COLORS, image=grey_slice, bg_label=0)`` with
its defaults (scikit-image 0.19 to 0.26 alike): the uint8 grey slice becomes float (/255) grey RGB, every pixel is
``0.3 * colour + 0.7 * grey``, and the background's colour is ``bg_color``'s default black, so background pixels
are darkened to ``0.7 * grey`` (as in the training images); the float result is multiplied by 255 and truncated to
uint8. Colours go to the labels present in the shown slice in increasing label order, cycling through
``OVERLAY_COLORS``.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from engines.resample import reorient_to_ras

__all__ = [
    "BRATS_LEGEND",
    "CT_WINDOW_MAX",
    "CT_WINDOW_MIN",
    "OVERLAY_COLORS",
    "LegendEntry",
    "Overlay",
    "SliceImage",
    "SliceModality",
    "best_slice_index",
    "brats_legend",
    "ct_window",
    "cxr_image",
    "display_slice",
    "mri_min_max",
    "overlay_colors_for",
    "overlay_slice",
    "render_overlay",
    "slice_image",
    "vista3d_legend",
]

#: The colour cycle of the training data and the demo (scikit-image colour names; "orange" appears twice on purpose).
OVERLAY_COLORS: tuple[str, ...] = (
    "red",
    "blue",
    "yellow",
    "magenta",
    "green",
    "indigo",
    "darkorange",
    "cyan",
    "pink",
    "brown",
    "orange",
    "lime",
    "orange",
    "gold",
    "yellowgreen",
    "darkgreen",
)

#: The BraTS legend as in training (labels 1 TC -> red, 2 edema -> blue, 4 ET -> yellow when all three are shown).
BRATS_LEGEND = "yellow and red: tumor core, only yellow: enhancing tumor, all colors: whole tumor"

#: The CT soft-tissue window W400/L50.
CT_WINDOW_MIN = -150.0
CT_WINDOW_MAX = 250.0


class SliceModality(str, enum.Enum):
    """How a volume's intensities become 0..255 before a slice is shown."""

    CT = "CT"
    MRI = "MRI"


@dataclass(frozen=True)
class SliceImage:
    """One axial slice as the VLM sees it: ``rgb`` (H, W, 3) uint8, its grey (H, W) uint8, and the slice used.

    ``slice_index`` counts along the superior axis of the RAS-reoriented volume (0 = most inferior slice).
    """

    rgb: np.ndarray
    grey: np.ndarray
    slice_index: int


@dataclass(frozen=True)
class LegendEntry:
    """One overlay colour and what it shows: ``label`` is the label id, ``name`` its label name."""

    color: str
    label: int
    name: str


@dataclass(frozen=True)
class Overlay:
    """The expert overlay: ``rgb`` (H, W, 3) uint8, the ``entries`` (colour, label, name) in colour order, the slice.

    ``legend_pairs`` gives the ``(colour, label name)`` pairs; ``vista3d_legend(overlay.entries)`` the legend text.
    """

    rgb: np.ndarray
    entries: tuple[LegendEntry, ...]
    slice_index: int

    @property
    def legend_pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple((entry.color, entry.name) for entry in self.entries)


def ct_window(volume: np.ndarray) -> np.ndarray:
    """HU -> 0..255 float32 with the W400/L50 window (MONAI ``ScaleIntensityRange(-150, 250, 0, 255, clip=True)``)."""
    values = np.asarray(volume, dtype=np.float32)
    scaled = (values - np.float32(CT_WINDOW_MIN)) / np.float32(CT_WINDOW_MAX - CT_WINDOW_MIN) * np.float32(255.0)
    return np.clip(scaled, 0.0, 255.0).astype(np.float32, copy=False)


def mri_min_max(volume: np.ndarray) -> np.ndarray:
    """Min-max over the whole volume to 0..255 float32 (MONAI ``ScaleIntensity(minv=0, maxv=255)``); a constant
    volume becomes all zeros."""
    values = np.asarray(volume, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    if high - low == 0.0:
        return np.zeros_like(values)
    return ((values - np.float32(low)) / np.float32(high - low) * np.float32(255.0)).astype(np.float32, copy=False)


def display_slice(axial_slice: np.ndarray) -> np.ndarray:
    """An axial (R, A) slice of a RAS volume -> display orientation: ``rot90(swapaxes(s, 0, 1), 2)``."""
    return np.rot90(np.swapaxes(np.asarray(axial_slice), 0, 1), k=2)


def _choose_slice(depth: int, slice_index: int | None) -> int:
    if slice_index is None:
        return depth // 2
    index = int(slice_index)
    if not 0 <= index < depth:
        raise ValueError(f"slice_index {index} is outside the volume's {depth} axial slices (0..{depth - 1})")
    return index


def _scaled_ras(volume: np.ndarray, affine: np.ndarray, modality: SliceModality | str) -> np.ndarray:
    modality = SliceModality(modality)
    array = np.asarray(volume)
    if array.ndim != 3:
        raise ValueError(f"volume must be 3D (X, Y, Z), got shape {array.shape}")
    oriented = reorient_to_ras(array, affine).array
    return ct_window(oriented) if modality is SliceModality.CT else mri_min_max(oriented)


def slice_image(
    volume: np.ndarray,
    affine: np.ndarray,
    modality: SliceModality | str,
    slice_index: int | None = None,
) -> SliceImage:
    """The axial slice the VLM sees for a CT (``modality="CT"``, HU) or MRI (``"MRI"``) volume (X, Y, Z).

    ``slice_index`` (0 = most inferior, on the RAS-reoriented grid) defaults to the middle slice (``Z // 2``).
    The returned ``SliceImage.slice_index`` says which slice was used.
    """
    scaled = _scaled_ras(volume, affine, modality)
    index = _choose_slice(scaled.shape[2], slice_index)
    grey = np.ascontiguousarray(display_slice(scaled[:, :, index].astype(np.uint8)))
    return SliceImage(rgb=np.stack([grey] * 3, axis=-1), grey=grey, slice_index=index)


def cxr_image(image: np.ndarray) -> np.ndarray:
    """A chest radiograph as the VLM sees it: the (H, W) uint8 MONOCHROME2 image repeated to (H, W, 3)."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(
            f"cxr_image takes the 8-bit (H, W) uint8 image from dicom_node.volumes, got {array.dtype} {array.shape}"
        )
    return np.stack([array] * 3, axis=-1)


def overlay_colors_for(labels: Iterable[int]) -> list[tuple[int, str]]:
    """Pair the distinct non-zero ``labels`` in increasing order with the colour cycle (cycled past 16 labels)."""
    present = sorted({int(label) for label in labels if int(label) != 0})
    return list(zip(present, itertools.cycle(OVERLAY_COLORS)))


def overlay_slice(grey: np.ndarray, label_slice: np.ndarray) -> np.ndarray:
    """Draw a 2D label slice over a 2D uint8 grey slice (both already in display orientation) -> (H, W, 3) uint8.

    Exactly ``(label2rgb(label_slice, colors=OVERLAY_COLORS, image=grey, bg_label=0) * 255).astype(np.uint8)``.
    """
    from skimage.color import label2rgb

    image = np.asarray(grey)
    labels = np.asarray(label_slice)
    if image.dtype != np.uint8 or image.shape != labels.shape or image.ndim != 2:
        raise ValueError(
            f"overlay_slice needs a uint8 (H, W) grey slice and a label slice of the same shape, "
            f"got {image.dtype} {image.shape} and {labels.shape}"
        )
    if labels.size and labels.min() < 0:
        raise ValueError("label ids must be non-negative (0 = background)")
    coloured = label2rgb(labels.astype(np.int64), colors=list(OVERLAY_COLORS), image=image, bg_label=0)
    return (coloured * 255).astype(np.uint8)


def render_overlay(
    volume: np.ndarray,
    label_volume: np.ndarray,
    affine: np.ndarray,
    modality: SliceModality | str,
    label_names: Mapping[int, str],
    slice_index: int | None = None,
) -> Overlay:
    """The expert-result image: the slice the VLM sees with the labels of that slice drawn over it.

    ``volume`` (X, Y, Z; HU for CT, any scale for MRI) and ``label_volume`` (same shape, integer ids, 0 =
    background) share ``affine`` (voxel -> RAS mm). ``slice_index`` as in ``slice_image`` (default: middle).
    ``label_names`` must name every label present in the shown slice. Returns the RGB image and the legend entries
    (colour, label id, name) of the labels present in that slice, in increasing label order.
    """
    image_array = np.asarray(volume)
    label_array = np.asarray(label_volume)
    if label_array.shape != image_array.shape:
        raise ValueError(f"label_volume {label_array.shape} must have the volume's shape {image_array.shape}")
    base = slice_image(image_array, affine, modality, slice_index)
    oriented_labels = reorient_to_ras(label_array, affine).array
    label_slice = np.ascontiguousarray(display_slice(oriented_labels[:, :, base.slice_index]))
    pairs = overlay_colors_for(np.unique(label_slice))
    missing = [label for label, _ in pairs if label not in label_names]
    if missing:
        raise ValueError(f"label_names has no name for label ids {missing} present in slice {base.slice_index}")
    entries = tuple(LegendEntry(color=color, label=label, name=label_names[label]) for label, color in pairs)
    return Overlay(rgb=overlay_slice(base.grey, label_slice), entries=entries, slice_index=base.slice_index)


def vista3d_legend(entries: Sequence[LegendEntry] | Sequence[tuple[str, str]]) -> str:
    """The VISTA3D legend text: ``"{color}: {label name}"`` joined by ``", "`` (protocol section 5).

    Takes ``Overlay.entries`` or ``Overlay.legend_pairs`` (``(colour, name)`` tuples).
    """
    parts = []
    for entry in entries:
        color, name = (entry.color, entry.name) if isinstance(entry, LegendEntry) else entry
        parts.append(f"{color}: {name}")
    return ", ".join(parts)


def brats_legend() -> str:
    """The BraTS legend text as trained (a fixed sentence; see ``BRATS_LEGEND``)."""
    return BRATS_LEGEND


def best_slice_index(
    label_volume: np.ndarray,
    affine: np.ndarray,
    labels: Iterable[int] | None = None,
    *,
    require_all: Iterable[int] | None = None,
) -> int | None:
    """The axial slice (index on the RAS-reoriented grid, as ``slice_image`` takes) with the most voxels of ``labels``.

    ``labels=None`` counts every non-zero label. ``require_all`` (e.g. BraTS 1, 2 and 4): only slices holding every
    one of those labels compete, when at least one such slice exists (the BraTS training slices all held the three
    tumour labels, the only slices its fixed legend describes truly); otherwise every slice does. Ties go to the lowest
    index. Returns None when no voxel has one of the labels (the caller then keeps the default middle slice).
    """
    oriented = reorient_to_ras(np.asarray(label_volume), affine).array
    if oriented.ndim != 3:
        raise ValueError(f"label_volume must be 3D (X, Y, Z), got shape {oriented.shape}")
    if labels is None:
        mask = oriented != 0
    else:
        wanted = [int(label) for label in labels]
        mask = np.isin(oriented, wanted)
    counts = mask.sum(axis=(0, 1))
    if not counts.any():
        return None
    if require_all is not None:
        holding = np.ones(oriented.shape[2], dtype=bool)
        for label in {int(label) for label in require_all}:
            holding &= (oriented == label).any(axis=(0, 1))
        if holding.any():
            counts = np.where(holding, counts, -1)
    return int(np.argmax(counts))
