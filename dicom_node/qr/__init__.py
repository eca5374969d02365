"""Query/Retrieve SCP (C-FIND, C-GET, C-MOVE, Study Root) over the result objects the service says the node holds."""

from dicom_node.qr.holdings import HeldObject, IndexedObject, ObjectCatalog, ObjectHeaders
from dicom_node.qr.query import IdentifierError, QueryLevel, find_matches, objects_to_retrieve
from dicom_node.qr.scp import QUERY_RETRIEVE_SOP_CLASSES, QueryRetrieveScp, RetrievalEvent

__all__ = [
    "HeldObject",
    "IdentifierError",
    "IndexedObject",
    "ObjectCatalog",
    "ObjectHeaders",
    "QUERY_RETRIEVE_SOP_CLASSES",
    "QueryLevel",
    "QueryRetrieveScp",
    "RetrievalEvent",
    "find_matches",
    "objects_to_retrieve",
]
