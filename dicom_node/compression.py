"""How SEG frames are written (a setting's value set, kept free of heavy imports: the settings import it), and the
uncompressed form a peer gets when it takes no compressed one.

BINARY segmentations are 1 bit per pixel; highdicom encodes them natively or as JPEG 2000 Lossless, the one compressed
transfer syntax it allows for BINARY, which dcmtk, dicom3tools and Orthanc read. A destination or retrieving peer that
accepts only uncompressed transfer syntaxes gets ``decompressed(dataset)``: pydicom's own decoder and writer, the
frames packed back to 1 bit per pixel for a BINARY SEG (pydicom's ``decompress`` leaves one byte per pixel).
"""

from __future__ import annotations

import enum

__all__ = ["SegCompression", "JPEG2000_MIN_SIDE", "UNCOMPRESSED", "decompressed"]

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
UNCOMPRESSED = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)  # what ``decompressed`` gives may go as either
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG2000_MIN_SIDE = 32  # openjpeg (through highdicom) encodes no frame smaller than this along either side


class SegCompression(str, enum.Enum):
    JPEG2000_LOSSLESS = "jpeg2000-lossless"  # the default: a VISTA3D SEG of a 512 x 512 CT is tens of times smaller
    NONE = "none"  # Explicit VR Little Endian, native 1-bit frames: for old viewers that cannot decode JPEG 2000

    def transfer_syntax(self, rows: int, columns: int) -> str:
        """The transfer syntax UID for frames of ``rows`` x ``columns``: frames under ``JPEG2000_MIN_SIDE`` pixels on
        a side cannot be JPEG 2000 encoded and are written natively."""
        if self is SegCompression.NONE or min(rows, columns) < JPEG2000_MIN_SIDE:
            return EXPLICIT_VR_LITTLE_ENDIAN
        return JPEG2000_LOSSLESS


def decompressed(dataset):
    """``dataset`` (a pydicom Dataset with compressed pixel data) changed in place to Explicit VR Little Endian with
    native pixel data, and returned; one already uncompressed is returned unchanged."""
    from pydicom.pixels import pack_bits

    if not dataset.file_meta.TransferSyntaxUID.is_compressed:
        return dataset
    one_bit = int(dataset.get("BitsAllocated", 8)) == 1
    frames = dataset.pixel_array if one_bit else None
    dataset.decompress()
    if one_bit:
        dataset.PixelData = pack_bits(frames)
    return dataset
