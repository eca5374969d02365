"""DICOMweb encodings of what the node stores: each instance's metadata as DICOM JSON, its frames and bulk data."""

from dicom_node.dicomweb.frames import (
    MAX_FRAMES_PER_REQUEST,
    FrameError,
    FrameSet,
    media_type_of,
    parse_frame_list,
    read_bulk_data,
    read_frames,
)
from dicom_node.dicomweb.metadata import (
    BULK_DATA_PREFIX,
    instance_metadata,
    stored_metadata,
    unpack_metadata,
    with_bulk_data_base,
)

__all__ = ["instance_metadata", "stored_metadata", "unpack_metadata", "with_bulk_data_base", "BULK_DATA_PREFIX",
           "read_frames", "read_bulk_data", "parse_frame_list", "media_type_of", "FrameSet", "FrameError",
           "MAX_FRAMES_PER_REQUEST"]
