"""DICOM series -> the arrays experts take: CT/MR volumes with RAS affines, brain MRI sequences, 8-bit radiographs;
and back: results made on a volume placed on their source images (``placement``) and read out frame by frame for a
SEG (``frame_readout``). Every RAS/LPS convention is here.

Array convention (``engines.experts.base.ExpertInput`` relies on it): axes (i, j, k) = (column, row, slice), affine
(i, j, k, 1) -> RAS mm; see ``dicom_node.volumes.geometry``.
"""

from dicom_node.volumes.brain_mri import (
    BrainMriPatterns,
    BrainMriSequence,
    BrainMriVolumes,
    SequencePattern,
    brain_mri_volumes,
    select_brain_mri_series,
)
from dicom_node.volumes.cxr import FRONTAL_VIEWS, Radiograph, choose_frontal_view, frontal_radiograph, radiograph_to_uint8
from dicom_node.volumes.errors import NoFrontalViewError, NotRoutableError, VolumeError, VolumeGeometryError
from dicom_node.volumes.geometry import (
    LPS_TO_RAS,
    FrameGeometry,
    GeometryTolerances,
    StackGeometry,
    check_regular_stack,
    lps_to_ras,
)
from dicom_node.volumes.frame_readout import GRID_TOLERANCE_VOXELS, volume_on_source_frames
from dicom_node.volumes.placement import (
    labels_on_grid,
    labels_on_source_grid,
    ras_to_lps_point,
    source_frames,
    source_grid,
    source_image_at,
)
from dicom_node.volumes.series import SeriesVolume, frame_geometries, is_localizer, volume_from_series

__all__ = [
    "FRONTAL_VIEWS",
    "GRID_TOLERANCE_VOXELS",
    "LPS_TO_RAS",
    "BrainMriPatterns",
    "BrainMriSequence",
    "BrainMriVolumes",
    "FrameGeometry",
    "GeometryTolerances",
    "NoFrontalViewError",
    "NotRoutableError",
    "Radiograph",
    "SequencePattern",
    "SeriesVolume",
    "StackGeometry",
    "VolumeError",
    "VolumeGeometryError",
    "brain_mri_volumes",
    "check_regular_stack",
    "choose_frontal_view",
    "frame_geometries",
    "frontal_radiograph",
    "is_localizer",
    "labels_on_grid",
    "labels_on_source_grid",
    "lps_to_ras",
    "radiograph_to_uint8",
    "ras_to_lps_point",
    "select_brain_mri_series",
    "source_frames",
    "source_grid",
    "source_image_at",
    "volume_on_source_frames",
    "volume_from_series",
]
