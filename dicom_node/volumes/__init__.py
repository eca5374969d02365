"""DICOM series -> the arrays experts take: CT/MR volumes with RAS affines, brain MRI sequences, 8-bit radiographs.

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
from dicom_node.volumes.series import SeriesVolume, frame_geometries, is_localizer, volume_from_series

__all__ = [
    "FRONTAL_VIEWS",
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
    "lps_to_ras",
    "radiograph_to_uint8",
    "select_brain_mri_series",
    "volume_from_series",
]
