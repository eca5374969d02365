"""How SEG frames are written: a setting's value set, kept free of heavy imports (the settings import it).

BINARY segmentations are 1 bit per pixel; highdicom encodes them natively or as JPEG 2000 Lossless, the one compressed
transfer syntax it allows for BINARY, which dcmtk, dicom3tools and Orthanc read.
"""

from __future__ import annotations

import enum

__all__ = ["SegCompression", "JPEG2000_MIN_SIDE"]

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
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
