"""Every storage SOP class the node accepts: pynetdicom's storage classes and the retired ones real equipment still sends.

PS3.4 retired these classes, and pynetdicom's storage service no longer knows them, but ultrasound carts still send
the old Ultrasound (Multi-frame) Image Storage and archives hold the others; Orthanc and dcmtk accept them all. The
node stores what it is sent and lets routing decide what an expert reads, so it accepts them too:
:func:`register_retired_storage_classes` registers each with pynetdicom's storage service through its public
``register_uid`` (only those pynetdicom does not already serve), and :func:`storage_sop_classes` lists every class
the node offers a presentation context for. Classes without a study (Hanging Protocol, Color Palette, ...) are not
storage of a patient's images and stay out.
"""

from __future__ import annotations

import threading

from pynetdicom import AllStoragePresentationContexts, register_uid
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

__all__ = ["RETIRED_STORAGE_CLASSES", "register_retired_storage_classes", "storage_sop_classes"]

# UID -> keyword under which it is registered with pynetdicom (PS3.6 Annex A names, "Retired" where a current class
# has the same name).
RETIRED_STORAGE_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.1.27": "StoredPrintStorage",
    "1.2.840.10008.5.1.1.29": "HardcopyGrayscaleImageStorage",
    "1.2.840.10008.5.1.1.30": "HardcopyColorImageStorage",
    "1.2.840.10008.5.1.4.1.1.3": "UltrasoundMultiFrameImageStorageRetired",
    "1.2.840.10008.5.1.4.1.1.5": "NuclearMedicineImageStorageRetired",
    "1.2.840.10008.5.1.4.1.1.6": "UltrasoundImageStorageRetired",
    "1.2.840.10008.5.1.4.1.1.8": "StandaloneOverlayStorage",
    "1.2.840.10008.5.1.4.1.1.9": "StandaloneCurveStorage",
    "1.2.840.10008.5.1.4.1.1.9.1": "WaveformStorageTrial",
    "1.2.840.10008.5.1.4.1.1.10": "StandaloneModalityLUTStorage",
    "1.2.840.10008.5.1.4.1.1.11": "StandaloneVOILUTStorage",
    "1.2.840.10008.5.1.4.1.1.12.3": "XRayAngiographicBiPlaneImageStorage",
    "1.2.840.10008.5.1.4.1.1.77.1": "VLImageStorageTrial",
    "1.2.840.10008.5.1.4.1.1.77.2": "VLMultiFrameImageStorageTrial",
    "1.2.840.10008.5.1.4.1.1.88.1": "TextSRStorageTrial",
    "1.2.840.10008.5.1.4.1.1.88.2": "AudioSRStorageTrial",
    "1.2.840.10008.5.1.4.1.1.88.3": "DetailSRStorageTrial",
    "1.2.840.10008.5.1.4.1.1.88.4": "ComprehensiveSRStorageTrial",
    "1.2.840.10008.5.1.4.1.1.129": "StandalonePETCurveStorage",
}

_lock = threading.Lock()


def register_retired_storage_classes() -> None:
    """Register the retired classes pynetdicom does not serve as storage (idempotent, thread-safe)."""
    with _lock:
        for uid, keyword in RETIRED_STORAGE_CLASSES.items():
            if uid_to_service_class(uid) is not StorageServiceClass:
                register_uid(uid, keyword, StorageServiceClass)


def storage_sop_classes() -> list[str]:
    """pynetdicom's storage SOP classes, then the retired ones (call ``register_retired_storage_classes`` first)."""
    classes = [str(context.abstract_syntax) for context in AllStoragePresentationContexts]
    known = set(classes)
    return classes + [uid for uid in RETIRED_STORAGE_CLASSES if uid not in known]
