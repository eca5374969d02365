"""WADO-RS: which stored files a study, series or instance URL names, and how the caller's Accept header is met.

Instances are returned as stored (the bytes the node wrote to its spool; a result's file as m3edge wrote it), never
transcoded: a request for a transfer
syntax other than the stored one is answered 406 unless it accepts any (``transfer-syntax=*``) or names none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, undefer

from service.db.models import Instance, Series, Study
from service.dicomweb.multipart import media_type_parameters

__all__ = ["StoredFile", "stored_files", "NotAcceptable", "wanted_transfer_syntax", "wants_json",
           "frame_content_type"]

LOGGER = logging.getLogger(__name__)


class NotAcceptable(ValueError):
    """The Accept header asks for a representation m3edge does not produce (a 406)."""


@dataclass(frozen=True)
class StoredFile:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: Path
    dicom_json: bytes | None = None  # the metadata kept (``metadata_keeper``), if asked


def stored_files(session: Session, spool: Path, study_uid: str, series_uid: str | None = None,
                 sop_instance_uid: str | None = None, *, with_metadata: bool = False) -> list[StoredFile]:
    """The held instances under a WADO-RS URL, in series then instance order; paths checked to be inside the spool.
    ``with_metadata``: with the DICOM JSON kept in each instance's row."""
    query = (select(Study.study_uid, Series.series_uid, Instance)
             .join(Series, Series.study_id == Study.id).join(Instance, Instance.series_id == Series.id)
             .where(Study.study_uid == study_uid, Instance.conflict.is_(False), Instance.other_patient.is_(False)))
    if series_uid is not None:
        query = query.where(Series.series_uid == series_uid)
    if sop_instance_uid is not None:
        query = query.where(Instance.sop_instance_uid == sop_instance_uid)
    if with_metadata:
        query = query.options(undefer(Instance.dicom_json))
    root = spool.resolve()
    files = []
    for study, series, instance in session.execute(query.order_by(Series.id, Instance.id)):
        path = (root / instance.path).resolve()
        if not path.is_relative_to(root):  # a row can only come from the spool writer; refuse anything else
            raise PermissionError(f"instance {instance.sop_instance_uid} points outside the spool")
        if not path.is_file():
            LOGGER.warning("instance %s is recorded but its file is gone from the spool; not served",
                           instance.sop_instance_uid)
            continue
        files.append(StoredFile(study, series, instance.sop_instance_uid, instance.transfer_syntax_uid, path,
                                instance.dicom_json if with_metadata else None))
    return files


def _ranges(accept: str) -> list[str]:
    return [part.strip() for part in _split_outside_quotes(accept) if part.strip()]


def _split_outside_quotes(text: str) -> list[str]:
    parts, current, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def wanted_transfer_syntax(accept: str) -> set[str] | None:
    """For an instance retrieve: ``None`` (any: as stored) or the transfer syntaxes the caller accepts.

    Raises ``NotAcceptable`` unless some media range allows ``multipart/related; type="application/dicom"``.
    """
    if not accept.strip():
        return None
    insisted: set[str] = set()
    for media_range in _ranges(accept):
        media_type, parameters = media_type_parameters(media_range)
        if media_type in ("*/*", "multipart/*"):
            return None
        if media_type != "multipart/related":
            continue
        if parameters.get("type", "application/dicom").lower() not in ("application/dicom", "application/*"):
            continue
        syntax = parameters.get("transfer-syntax", "*")
        if syntax == "*":
            return None
        insisted.add(syntax)
    if insisted:
        return insisted
    raise NotAcceptable('instances are sent as multipart/related; type="application/dicom"')


def wants_json(accept: str) -> bool:
    """Whether a metadata or search response in DICOM JSON satisfies the Accept header."""
    if not accept.strip():
        return True
    for media_range in _ranges(accept):
        media_type, _ = media_type_parameters(media_range)
        if media_type in ("*/*", "application/*", "application/json", "application/dicom+json"):
            return True
    return False


def frame_content_type(accept: str, transfer_syntax_uid: str, media_type: str) -> str:
    """The Content-Type of each part of a frames or bulk data answer, or ``NotAcceptable``.

    Frames go as stored (``transfer_syntax_uid``, whose image media type is ``media_type``, or
    ``application/octet-stream`` for native pixel data): acceptable when the caller takes
    ``multipart/related`` of ``application/octet-stream`` with ``transfer-syntax=*`` or that syntax (native data
    also with none: Explicit VR Little Endian is its default), or of the image media type.
    """
    native = media_type == "application/octet-stream"
    stored = f"{media_type}; transfer-syntax={transfer_syntax_uid}"
    if not accept.strip():
        return stored
    for media_range in _ranges(accept):
        range_type, parameters = media_type_parameters(media_range)
        if range_type in ("*/*", "multipart/*"):
            return stored
        if range_type != "multipart/related":
            continue
        part_type = parameters.get("type", "application/octet-stream").lower()
        syntax = parameters.get("transfer-syntax")
        if part_type in ("application/octet-stream", "*/*"):
            if syntax == "*" or syntax == transfer_syntax_uid or (syntax is None and native):
                return f"application/octet-stream; transfer-syntax={transfer_syntax_uid}"
        elif part_type in (media_type, "image/*") and not native:
            if syntax in (None, "*", transfer_syntax_uid):
                return stored
    raise NotAcceptable(f"frames are sent as stored ({transfer_syntax_uid}), never transcoded: accept "
                        f'multipart/related; type="application/octet-stream"; transfer-syntax=* (or {media_type})')
