"""DICOM SEG of one expert's label volume, on the frames of the source series.

A label volume in (X, Y, Z) = (column, row, slice) order with an affine from voxel index to RAS mm, on the grid of the
source series (``dicom_node.volumes.labels_on_source_grid`` puts an expert's labels there). For every source frame (each single-frame source instance in the order given, or
each frame of one enhanced multi-frame instance, placed by its functional groups), the frame is read out of that
volume: its Image Position (Patient) and Image Orientation (Patient) are turned from LPS into RAS
(x -> -x, y -> -y), mapped into voxel indices with the inverse affine, and must land on whole voxels with the
in-plane steps along volume axes (any permutation or flip). Anything else means the labels are not on the source grid
and is refused: resampling belongs to ``dicom_node.volumes.placement``, not to the writer.
"""

from __future__ import annotations

import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node.arrays import c_order_copy
from dicom_node.compression import SegCompression
from dicom_node.results.codes import local_coding_scheme, structure_coding
from dicom_node.results.content import AlgorithmIdentity, ExpertFindings, LabelSegmentation, StructureSegment
from dicom_node.results.equipment import algorithm_equipment
from dicom_node.results.uids import ResultKind, ResultUids, SeriesNumber
from dicom_node.volumes import LPS_TO_RAS, FrameGeometry, source_frames

__all__ = [
    "SegCompression",
    "build_segmentation",
    "frames_on_source_grid",
    "source_frames",
    "segment_descriptions",
    "segment_pixels",
    "GRID_TOLERANCE_VOXELS",
]

GRID_TOLERANCE_VOXELS = 1e-3
_LPS_TO_RAS = LPS_TO_RAS[:3, :3]  # dicom_node.volumes' convention


def _axis_step(step: np.ndarray, what: str) -> tuple[int, int]:
    rounded = np.round(step)
    if np.max(np.abs(step - rounded)) > GRID_TOLERANCE_VOXELS or np.count_nonzero(rounded) != 1 or np.max(
        np.abs(rounded)
    ) != 1:
        raise ValueError(
            f"labels are not on the source grid: one {what} of the source is {np.round(step, 4).tolist()} voxels; "
            "give the label volume on the source series' own grid"
        )
    axis = int(np.flatnonzero(rounded)[0])
    return axis, int(rounded[axis])


def _frame_window(shape: tuple[int, ...], to_voxel: np.ndarray, frame: FrameGeometry) -> tuple[tuple, int, int]:
    """Where a source frame lies in the label volume: the index (slices along the row and column axes, an int along
    the third) and the row and column axes."""
    orientation = np.asarray(frame.orientation, dtype=float)
    row_spacing, column_spacing = frame.pixel_spacing
    origin_ras = _LPS_TO_RAS @ np.asarray(frame.position, dtype=float)
    origin = to_voxel[:3, :3] @ origin_ras + to_voxel[:3, 3]
    column_axis, column_sign = _axis_step(
        to_voxel[:3, :3] @ _LPS_TO_RAS @ (orientation[:3] * column_spacing), "column step"
    )
    row_axis, row_sign = _axis_step(to_voxel[:3, :3] @ _LPS_TO_RAS @ (orientation[3:] * row_spacing), "row step")
    if column_axis == row_axis:
        raise ValueError("labels are not on the source grid: rows and columns map onto the same volume axis")
    start = np.round(origin)
    if np.max(np.abs(origin - start)) > GRID_TOLERANCE_VOXELS:
        raise ValueError(
            f"labels are not on the source grid: {frame.source} starts at voxel {np.round(origin, 3).tolist()}, "
            "between voxels"
        )
    first = [int(start[axis]) for axis in range(3)]
    last = list(first)
    last[column_axis] += column_sign * (frame.columns - 1)
    last[row_axis] += row_sign * (frame.rows - 1)
    if min(first + last) < 0 or any(max(a, b) >= n for a, b, n in zip(first, last, shape)):
        raise ValueError(
            f"labels of shape {tuple(shape)} do not cover {frame.source}: "
            "give the label volume on the source series' own grid"
        )
    window: list[slice | int] = list(first)
    for axis, sign in ((column_axis, column_sign), (row_axis, row_sign)):
        window[axis] = _steps(first[axis], last[axis], sign)
    return tuple(window), row_axis, column_axis


def _steps(first: int, last: int, step: int) -> slice:
    stop = last + step
    return slice(first, None if stop < 0 else stop, step)


def _stack_window(windows: list[tuple[tuple, int, int]]) -> tuple[tuple, tuple[int, int, int]] | None:
    """One index for all frames when they are consecutive slices of the volume (a regular series, in either
    order), with the axis order (slice, row, column); None otherwise."""
    first, row_axis, column_axis = windows[0]
    (slice_axis,) = {0, 1, 2} - {row_axis, column_axis}
    for window, rows, columns in windows:
        if (rows, columns) != (row_axis, column_axis) or window[row_axis] != first[row_axis] or (
            window[column_axis] != first[column_axis]
        ):
            return None
    positions = [window[slice_axis] for window, _, _ in windows]
    step = positions[1] - positions[0] if len(positions) > 1 else 1
    if step not in (1, -1) or any(b - a != step for a, b in zip(positions, positions[1:])):
        return None
    window = list(first)
    window[slice_axis] = _steps(positions[0], positions[-1], step)
    return tuple(window), (slice_axis, row_axis, column_axis)


def frames_on_source_grid(segmentation: LabelSegmentation, source_images: tuple[Dataset, ...]) -> np.ndarray:
    """The label volume as (frames, rows, columns), one frame per source frame (``source_frames``), in their order."""
    frames_geometry = source_frames(source_images)
    labels = segmentation.labels
    to_voxel = np.linalg.inv(segmentation.affine)
    windows = [_frame_window(labels.shape, to_voxel, frame) for frame in frames_geometry]
    stack = _stack_window(windows)
    if stack is not None:
        window, axes = stack
        return c_order_copy(np.transpose(labels[window], axes))
    frames = [labels[window] for window, _, _ in windows]  # each a view: its two axes in volume order
    frames = [frame.T if row_axis > column_axis else frame for frame, (_, row_axis, column_axis) in zip(frames, windows)]
    if len({frame.shape for frame in frames}) != 1:
        raise ValueError("source instances differ in Rows or Columns: give the instances of one regular series")
    stacked = np.empty((len(frames), *frames[0].shape), dtype=labels.dtype)  # C order, as highdicom reads it
    for index, frame in enumerate(frames):
        stacked[index] = frame
    return stacked


def segment_pixels(frames: np.ndarray, segments: tuple[StructureSegment, ...]) -> np.ndarray:
    """What highdicom encodes: a label map of segment numbers when the segments are disjoint single labels
    (VISTA3D: memory of one volume whatever the number of structures), else one boolean mask per segment
    (BraTS' overlapping TC/WT/ET)."""
    ids = [segment.label_ids[0] for segment in segments]
    if all(len(segment.label_ids) == 1 for segment in segments) and len(set(ids)) == len(ids):
        dtype = np.uint8 if len(segments) < 256 else np.uint16
        top = max(ids)
        if frames.size and (int(frames.min()) < 0 or int(frames.max()) > top):
            frames = np.where((frames < 0) | (frames > top), 0, frames)  # ids no segment names: background
        lookup = np.zeros(top + 1, dtype=dtype)
        lookup[ids] = np.arange(1, len(segments) + 1)
        return lookup[frames]
    return np.stack([np.isin(frames, segment.label_ids) for segment in segments], axis=-1)


def segment_descriptions(
    segments: tuple[StructureSegment, ...], algorithm: AlgorithmIdentity, uids: ResultUids
) -> list[hd.seg.SegmentDescription]:
    """One description per segment, numbered from 1 in the order given, coded by ``codes.structure_coding``."""
    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm.version,
        source=algorithm.manufacturer,
        parameters={"backend": algorithm.backend, "weights": algorithm.weights_digest},
    )
    descriptions = []
    for number, segment in enumerate(segments, start=1):
        coding = structure_coding(segment.name)
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=segment.name,
            segmented_property_category=coding.category,
            segmented_property_type=coding.type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_id,
            tracking_uid=uids.tracking_uid(segment.name),
            tracking_id=segment.name,
            anatomic_regions=[coding.anatomic_region] if coding.anatomic_region is not None else None,
        )
        if coding.type_modifier is not None:
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept.from_code(coding.type_modifier)
            ]
        descriptions.append(description)
    return descriptions


def build_segmentation(
    findings: ExpertFindings,
    uids: ResultUids,
    *,
    now: datetime.datetime | None = None,
    index: int = 0,
    demo_run: bool = False,
    compression: SegCompression | str = SegCompression.JPEG2000_LOSSLESS,
) -> hd.seg.Segmentation:
    """The SEG of ``findings.segmentation``: binary, one (possibly overlapping) segment per StructureSegment, its
    frames compressed as ``compression`` says (JPEG 2000 Lossless by default).

    It says DEMO (series and content description) when its expert ran DEMO weights or ``demo_run`` (another model of
    the run did)."""
    compression = SegCompression(compression)
    if not isinstance(findings, ExpertFindings):
        raise TypeError("findings must be ExpertFindings")
    if findings.segmentation is None:
        raise ValueError("findings have no segmentation to write: build a SEG only for segmenting experts")
    if not isinstance(uids, ResultUids):
        raise TypeError("uids must be a ResultUids")
    if uids.study_instance_uid != findings.study_instance_uid:
        raise ValueError("uids were made for another study than the findings' source images")
    now = now or datetime.datetime.now()
    segmentation = findings.segmentation
    algorithm = findings.algorithm
    frames = frames_on_source_grid(segmentation, findings.source_images)
    masks = segment_pixels(frames, segmentation.segments)
    transfer_syntax = compression.transfer_syntax(frames.shape[1], frames.shape[2])
    demo = " DEMO" if algorithm.demo or demo_run else ""
    return hd.seg.Segmentation(
        source_images=list(findings.source_images),
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(segmentation.segments, algorithm, uids),
        series_instance_uid=uids.series_uid(ResultKind.SEGMENTATION, index),
        series_number=int(SeriesNumber.SEGMENTATION) + index,
        sop_instance_uid=uids.instance_uid(ResultKind.SEGMENTATION, index),
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=algorithm.weights_digest[:64],
        content_label="AI_DRAFT_DEMO" if demo else "AI_DRAFT",
        content_description=f"AI draft for a qualified reader{demo}"[:64],
        content_creator_name=None,
        series_description=f"AI DRAFT {algorithm.name} segmentation{demo}"[:64],
        coding_schemes=[local_coding_scheme()],
        contributing_equipment=[algorithm_equipment(algorithm, uids, now)],
        content_date=now.date(),
        content_time=now.time(),
        transfer_syntax_uid=transfer_syntax,
    )
