"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS) over what the node holds, and the service's side of DICOM Query/Retrieve."""

from service.dicomweb.multipart import BodyPart, FilePart, MultipartError, MultipartStream, encode_parts, parse_parts
from service.dicomweb.qido import QidoError, QidoLevel, QidoQuery, parse_qido, search
from service.dicomweb.results import ResultInstance, ResultInstances
from service.dicomweb.query_retrieve import QueryRetrieveAudit, ReportObjectCatalog, build_query_retrieve
from service.dicomweb.stow import StowReceiver, StowRefused, StowResult
from service.dicomweb.wado import NotAcceptable, StoredFile, stored_files

__all__ = [
    "BodyPart",
    "FilePart",
    "MultipartError",
    "MultipartStream",
    "NotAcceptable",
    "QidoError",
    "QidoLevel",
    "QidoQuery",
    "QueryRetrieveAudit",
    "ReportObjectCatalog",
    "ResultInstance",
    "ResultInstances",
    "StoredFile",
    "StowReceiver",
    "StowRefused",
    "StowResult",
    "build_query_retrieve",
    "encode_parts",
    "parse_parts",
    "parse_qido",
    "search",
    "stored_files",
]
