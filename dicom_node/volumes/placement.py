"""Results against their source images: a label volume put on a source series' grid, and the source frame at a point.

Conventions as in ``dicom_node.volumes.geometry``: a volume's affine maps (i, j, k) to RAS mm; DICOM positions and
orientations are LPS. This is where results made on a volume meet the images they describe:

- ``source_frames``: the frames a result lies on (single-frame instances, or every frame of one multi-frame instance);
- ``source_grid``: the (X, Y, Z) shape and RAS affine of the volume those frames form, exactly as
  ``volume_from_series`` builds it;
- ``labels_on_source_grid``: an expert's labels, made on the grid it was given (BraTS: its 1 mm grid), sampled at the
  source grid's voxel centres (nearest neighbour, 0 outside); labels already on that grid pass through unchanged;
- ``source_image_at``: the source frame nearest a point (RAS mm, as an engine gives it), for a Secondary Capture.

numpy only, beside pydicom datasets; the engines never see any of this.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom import Dataset

from dicom_node.volumes.errors import VolumeGeometryError
from dicom_node.volumes.geometry import LPS_TO_RAS, FrameGeometry, check_regular_stack
from dicom_node.volumes.series import frame_geometries

__all__ = ["labels_on_grid", "labels_on_source_grid", "source_frames", "source_grid", "source_image_at",
           "ras_to_lps_point"]


def ras_to_lps_point(point: Sequence[float]) -> np.ndarray:
    """A point in RAS mm -> the same point in DICOM patient coordinates (LPS), as ImagePositionPatient holds it."""
    return LPS_TO_RAS[:3, :3] @ np.asarray(point, dtype=np.float64)  # negating x and y is its own inverse


def source_frames(source_images: Sequence[Dataset]) -> list[FrameGeometry]:
    """The frames a result (SEG, SC) lies on, in the order a SEG's frames follow: one per single-frame source
    instance, or every frame of one multi-frame (enhanced) source instance, placed by its functional groups."""
    if not source_images:
        raise ValueError("no source instances: a SEG's frames lie on the instances of a source series")
    multi_frame = [image for image in source_images if int(image.get("NumberOfFrames", 1) or 1) > 1]
    if multi_frame and len(source_images) > 1:
        raise ValueError(f"{len(source_images)} source instances of which {len(multi_frame)} are multi-frame: a SEG "
                         "lies on one multi-frame instance or on single-frame instances")
    frames = []
    for image in source_images:
        for keyword in ("Rows", "Columns"):
            if keyword not in image:
                raise ValueError(f"source instance {image.SOPInstanceUID} lacks {keyword}, needed to place its frame")
        try:
            frames += frame_geometries(image)
        except VolumeGeometryError as exc:
            raise ValueError(f"cannot place the SEG's frames: {exc}") from None
    return frames


def source_grid(source_images: Sequence[Dataset]) -> tuple[tuple[int, int, int], np.ndarray]:
    """(X, Y, Z) shape and affine (voxel -> RAS mm) of the volume the source images form, as ``volume_from_series``
    makes it (columns, rows, slices sorted along the normal); ``VolumeGeometryError`` when they are not one volume."""
    frames = source_frames(source_images)
    stack = check_regular_stack(frames)
    return (int(frames[0].columns), int(frames[0].rows), len(frames)), stack.affine


def labels_on_grid(labels: np.ndarray, affine: np.ndarray, shape: Sequence[int],
                   target_affine: np.ndarray) -> np.ndarray:
    """``labels`` (on ``affine``) sampled at the voxel centres of another grid, nearest neighbour; 0 outside."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    to_source = np.linalg.inv(np.asarray(affine, dtype=float)) @ np.asarray(target_affine, dtype=float)
    source = np.rint(index @ to_source[:3, :3].T + to_source[:3, 3]).astype(np.int64)
    inside = np.all((source >= 0) & (source < np.asarray(labels.shape)), axis=1)
    out = np.zeros(len(index), dtype=labels.dtype)
    out[inside] = labels[tuple(source[inside].T)]
    return out.reshape(tuple(int(n) for n in shape))


def labels_on_source_grid(labels: np.ndarray, affine: np.ndarray,
                          source_images: Sequence[Dataset]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, affine) on the grid of ``source_images``, ready for the SEG writer: unchanged when the expert's
    grid is already theirs (VISTA3D on the CT), else resampled by ``labels_on_grid`` (BraTS: 1 mm grid -> T1c)."""
    shape, target = source_grid(source_images)
    matrix = np.asarray(affine, dtype=np.float64)
    if tuple(labels.shape) == shape and np.allclose(matrix, target, rtol=0.0, atol=1e-6):
        return labels, matrix
    return labels_on_grid(labels, matrix, shape, target), target


def source_image_at(source_images: Sequence[Dataset],
                    ras_point: Sequence[float] | None) -> tuple[Dataset, int | None]:
    """The source frame nearest ``ras_point`` along its normal (the middle frame when None): its instance and, for
    an enhanced multi-frame instance, its frame number (None for a single-frame instance)."""
    frames = source_frames(source_images)
    multi_frame = len(frames) > len(source_images)

    def located(index: int) -> tuple[Dataset, int | None]:
        return (source_images[0], index + 1) if multi_frame else (source_images[index], None)

    if ras_point is None:
        return located(len(frames) // 2)
    point = ras_to_lps_point(ras_point)

    def distance(index: int) -> float:
        orientation = np.asarray(frames[index].orientation, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        return abs(float(normal @ (point - np.asarray(frames[index].position, dtype=float))))

    return located(min(range(len(frames)), key=distance))
