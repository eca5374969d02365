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
    "BratsImages",
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


class BratsImages(str, enum.Enum):
    """What the four placeholders of the BraTS first turn show.

    ``as_trained`` (the default): the T1c slice for all four, as every BraTS training conversation of VILA-M3 did
    (Project-MONAI/VLM-Radiology-Agent-Framework ``m3/data_prepare/experts/expert_extract_slices_brats.py`` saves
    ``image_slices[0]``, the T1c slice, under each sequence's name). ``sequences``: the same slice of each of the four
    sequences, what the prompt's words describe but the model never saw in training. The expert always gets the four
    real sequences either way.
    """

    AS_TRAINED = "as_trained"
    SEQUENCES = "sequences"


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
    labels: tuple[int, ...] = ()  # the label ids of ``legend``, in the same order
    slice_index: int | None = None  # the axial slice it was drawn on


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

    def best_slice(
        self,
        label_volume: np.ndarray,
        affine: np.ndarray,
        labels: Iterable[int] | None,
        *,
        require_all: Iterable[int] | None = None,
    ) -> int | None:
        """The axial slice with the most voxels of ``labels`` (None: any label), among the slices holding every label of
        ``require_all`` when there is one; None when there are no such voxels."""
        ...


class ProtocolImageRenderer:
    """The protocol's images, drawn by ``engines.images`` (imported on first use: scikit-image is not light).

    ``brats_images`` chooses what the BraTS first turn shows (see :class:`BratsImages`).
    """

    def __init__(self, brats_images: BratsImages | str = BratsImages.AS_TRAINED) -> None:
        self.brats_images = BratsImages(brats_images)

    def first_turn_images(self, form: ImageForm, inputs: ExpertInput, slice_index: int | None) -> FirstTurnImages:
        from engines import images

        form = ImageForm(form)
        if form is ImageForm.CXR:
            return FirstTurnImages((images.cxr_image(inputs.volume),), ("slice",), None, None)
        affine = _require_affine(inputs)
        if form is ImageForm.BRATS:
            count = _axial_count(inputs.volume[0], affine)
            if self.brats_images is BratsImages.AS_TRAINED:
                t1c = images.slice_image(inputs.volume[0], affine, "MRI", slice_index)
                roles = ("T1c",) + tuple(f"T1c (as trained, in place of {name})" for name in BRATS_SEQUENCE_NAMES[1:])
                return FirstTurnImages((t1c.rgb,) * 4, roles, t1c.slice_index, count)
            shown = [images.slice_image(sequence, affine, "MRI", slice_index) for sequence in inputs.volume]
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
        labels = tuple(entry.label for entry in drawn.entries)
        return RenderedOverlay(drawn.rgb, drawn.legend_pairs, labels, drawn.slice_index)

    def best_slice(
        self,
        label_volume: np.ndarray,
        affine: np.ndarray,
        labels: Iterable[int] | None,
        *,
        require_all: Iterable[int] | None = None,
    ) -> int | None:
        from engines import images

        return images.best_slice_index(label_volume, affine, labels, require_all=require_all)


def _require_affine(inputs: ExpertInput) -> np.ndarray:
    if inputs.affine is None:
        raise ValueError("a CT or MRI volume needs its affine (voxel index -> RAS mm) to be shown in RAS orientation")
    return inputs.affine


def _axial_count(volume: np.ndarray, affine: np.ndarray) -> int:
    from engines.resample import ras_axis_order

    permutation, _ = ras_axis_order(affine)
    return int(np.asarray(volume).shape[permutation[2]])
