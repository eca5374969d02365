"""What the agent needs drawn, as a small protocol, and the default that draws it with ``engines.images``.

The agent never draws pixels itself: it asks a :class:`StudyImageRenderer` for the first turn's images, the expert
overlay (with its ordered ``(colour, name)`` legend) and the slice that shows the most of a structure. Tests may inject
another renderer; :class:`ProtocolImageRenderer` is the protocol's own (section 6: CT W400/L50, MRI min-max, CXR 8-bit;
section 5: the overlay colour cycle).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from engines.experts.base import ExpertInput

__all__ = [
    "ImageForm",
    "BRATS_SEQUENCE_NAMES",
    "FirstTurnImages",
    "RenderedOverlay",
    "StudyImageRenderer",
    "ProtocolImageRenderer",
]

BRATS_SEQUENCE_NAMES = ("T1c", "T1", "T2", "FLAIR")  # the order of the BraTS first turn and of ExpertInput.volume


class ImageForm(str, enum.Enum):
    """What the model is shown in the first turn."""

    CXR = "CXR"  # one radiograph (H, W) uint8
    CT = "CT"  # one axial slice of a CT volume (X, Y, Z) HU
    MRI = "MRI"  # one axial slice of one MRI volume (X, Y, Z)
    BRATS = "BRATS"  # the same axial slice of four MRI sequences (4, X, Y, Z): T1c, T1, T2, FLAIR


@dataclass(frozen=True)
class FirstTurnImages:
    images: tuple[np.ndarray, ...]  # (H, W, 3) uint8, in placeholder order
    roles: tuple[str, ...]  # "slice", or the BraTS sequence names
    slice_index: int | None  # axial index on the RAS grid; None for CXR
    slice_count: int | None


@dataclass(frozen=True)
class RenderedOverlay:
    image: np.ndarray  # (H, W, 3) uint8
    legend: tuple[tuple[str, str], ...]  # (colour, label name) for the labels in the shown slice, in colour order


@runtime_checkable
class StudyImageRenderer(Protocol):
    def first_turn_images(self, form: ImageForm, inputs: ExpertInput, slice_index: int | None) -> FirstTurnImages:
        """The image(s) of the first turn; ``slice_index`` None means the middle slice."""
        ...

    def overlay(
        self,
        form: ImageForm,
        inputs: ExpertInput,
        label_volume: np.ndarray,
        label_names: Mapping[int, str],
        slice_index: int | None,
    ) -> RenderedOverlay:
        """The labels of the shown slice drawn over it, as the model saw it in the first turn."""
        ...

    def best_slice(self, label_volume: np.ndarray, affine: np.ndarray, labels: Iterable[int] | None) -> int | None:
        """The axial slice with the most voxels of ``labels`` (None: any label); None when there are none."""
        ...


class ProtocolImageRenderer:
    """The protocol's images, drawn by ``engines.images`` (imported on first use: scikit-image is not light)."""

    def first_turn_images(self, form: ImageForm, inputs: ExpertInput, slice_index: int | None) -> FirstTurnImages:
        from engines import images

        form = ImageForm(form)
        if form is ImageForm.CXR:
            return FirstTurnImages((images.cxr_image(inputs.volume),), ("slice",), None, None)
        affine = _require_affine(inputs)
        if form is ImageForm.BRATS:
            shown = [images.slice_image(sequence, affine, "MRI", slice_index) for sequence in inputs.volume]
            count = _axial_count(inputs.volume[0], affine)
            return FirstTurnImages(tuple(s.rgb for s in shown), BRATS_SEQUENCE_NAMES, shown[0].slice_index, count)
        shown = images.slice_image(inputs.volume, affine, form.value, slice_index)
        return FirstTurnImages((shown.rgb,), ("slice",), shown.slice_index, _axial_count(inputs.volume, affine))

    def overlay(
        self,
        form: ImageForm,
        inputs: ExpertInput,
        label_volume: np.ndarray,
        label_names: Mapping[int, str],
        slice_index: int | None,
    ) -> RenderedOverlay:
        from engines import images

        form = ImageForm(form)
        if form is ImageForm.CXR:
            raise ValueError("a radiograph has no slices to draw a segmentation over (only the CXR expert fits it)")
        affine = _require_affine(inputs)
        # BraTS: drawn over the T1c slice, as the reference's training slices and demo do.
        base, modality = (inputs.volume[0], "MRI") if form is ImageForm.BRATS else (inputs.volume, form.value)
        drawn = images.render_overlay(base, label_volume, affine, modality, label_names, slice_index)
        return RenderedOverlay(drawn.rgb, drawn.legend_pairs)

    def best_slice(self, label_volume: np.ndarray, affine: np.ndarray, labels: Iterable[int] | None) -> int | None:
        from engines import images

        return images.best_slice_index(label_volume, affine, labels)


def _require_affine(inputs: ExpertInput) -> np.ndarray:
    if inputs.affine is None:
        raise ValueError("a CT or MRI volume needs its affine (voxel index -> RAS mm) to be shown in RAS orientation")
    return inputs.affine


def _axial_count(volume: np.ndarray, affine: np.ndarray) -> int:
    from engines.resample import ras_axis_order

    permutation, _ = ras_axis_order(affine)
    return int(np.asarray(volume).shape[permutation[2]])
