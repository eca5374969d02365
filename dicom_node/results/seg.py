"""DICOM SEG of one expert's label volume, on the frames of the source series.

The label volume is (X, Y, Z) = (column, row, slice) with an affine from voxel index to RAS mm, on the grid of the
source series (``dicom_node.volumes.labels_on_source_grid`` puts an expert's labels there). Its frames are read out
on the source frames by ``dicom_node.volumes.volume_on_source_frames`` (where the LPS/RAS conversion lives), which
refuses labels that are not on the source grid: resampling belongs to ``dicom_node.volumes``, not to the writer.
"""

from __future__ import annotations

import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node.compression import SegCompression
from dicom_node.results.codes import local_coding_scheme, structure_coding
from dicom_node.results.content import AlgorithmIdentity, ExpertFindings, LabelSegmentation, StructureSegment
from dicom_node.results.equipment import algorithm_equipment
from dicom_node.results.uids import ResultKind, ResultUids, SeriesNumber
from dicom_node.volumes import GRID_TOLERANCE_VOXELS, source_frames, volume_on_source_frames

__all__ = [
    "SegCompression",
    "build_segmentation",
    "frames_on_source_grid",
    "source_frames",
    "segment_descriptions",
    "segment_pixels",
    "GRID_TOLERANCE_VOXELS",
]

def frames_on_source_grid(segmentation: LabelSegmentation, source_images: tuple[Dataset, ...]) -> np.ndarray:
    """The label volume as (frames, rows, columns), one frame per source frame (``source_frames``), in their order:
    ``dicom_node.volumes.volume_on_source_frames``."""
    return volume_on_source_frames(segmentation.labels, segmentation.affine, source_images)


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
