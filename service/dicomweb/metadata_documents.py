"""WADO-RS metadata bodies from what was kept per instance, not from the files.

A received instance's row holds its DICOM JSON (``instances.dicom_json``, kept once its study went quiet:
``service.dicomweb.metadata_keeper``); a study's metadata is those documents joined, with their BulkDataURIs made
absolute for this request. An instance without one (its study still receiving, or a header pydicom could not render:
``UNREADABLE``) and the result objects m3edge wrote
(SR, SEG, overlay: files under ``HOME/results``, never changed once written) are read from their file once and kept
in a bounded cache keyed by path, size and modification time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from dicom_node.dicomweb import instance_metadata, unpack_metadata, with_bulk_data_base
from service.dicomweb.dicom_json import attribute
from service.dicomweb.wado import StoredFile

__all__ = ["MetadataDocuments"]


class MetadataDocuments:
    """One per app; thread-safe."""

    def __init__(self, max_cached: int = 512, max_cached_bytes: int = 64 * 1024 * 1024) -> None:
        self._cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._cached_bytes = 0
        self._max_cached = max_cached
        self._max_cached_bytes = max_cached_bytes
        self._lock = threading.Lock()

    def body(self, files: list[StoredFile], base: str) -> bytes:
        """The DICOM JSON array of ``files`` (``base``: the DICOMweb root URL of this request)."""
        parts = []
        for stored in files:
            document = self._document(stored)
            series_url = f"{base}/studies/{stored.study_uid}/series/{stored.series_uid}"
            parts.append(with_bulk_data_base(document, series_url))
        return b"[" + b",".join(parts) + b"]"

    def _document(self, stored: StoredFile) -> bytes:
        if stored.dicom_json:  # None: not kept yet; empty: unreadable when the keeper tried (read the file, as here)
            return unpack_metadata(stored.dicom_json)
        try:
            status = stored.path.stat()
        except OSError:
            return _uids_only(stored)
        key = (str(stored.path), status.st_size, status.st_mtime_ns)
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                return found
        try:
            document = instance_metadata(stored.path)
        except Exception:  # noqa: BLE001 - one unreadable file must not hide its neighbours' metadata
            return _uids_only(stored)
        with self._lock:
            self._cache[key] = document
            self._cached_bytes += len(document)
            while self._cache and (len(self._cache) > self._max_cached or self._cached_bytes > self._max_cached_bytes):
                _, dropped = self._cache.popitem(last=False)
                self._cached_bytes -= len(dropped)
        return document


def _uids_only(stored: StoredFile) -> bytes:
    import json

    return json.dumps({"00080018": attribute("UI", stored.sop_instance_uid),
                       "0020000D": attribute("UI", stored.study_uid),
                       "0020000E": attribute("UI", stored.series_uid)}).encode()
