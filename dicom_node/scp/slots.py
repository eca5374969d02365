"""``DICOM_MAX_ASSOCIATIONS``, counted over the associations this process let in, not over its connections.

pynetdicom counts every acceptor thread against ``AE.maximum_associations``, including connections that have not
finished their A-ASSOCIATE-RQ, so a few silent sockets could refuse a real caller (Local Limit Exceeded). The node
lifts pynetdicom's count out of the way and takes a slot here when it admits an A-ASSOCIATE-RQ; the slot is given
back when the association is released or aborted, or at the latest once its thread has ended (a slot never leaks).
Connections that are still asking are bounded on their own (``dicom_node.scp.guarded_server``).
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["AssociationSlots"]


class AssociationSlots:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the association limit must be at least 1, not {limit}")
        self.limit = limit
        self._held: set[Any] = set()
        self._lock = threading.Lock()

    def take(self, assoc: Any) -> bool:
        """A slot for ``assoc`` (an association being admitted), or False when all are held."""
        with self._lock:
            self._held = {held for held in self._held if held.is_alive()}
            if len(self._held) >= self.limit:
                return False
            self._held.add(assoc)
            return True

    def give_back(self, assoc: Any) -> None:
        with self._lock:
            self._held.discard(assoc)

    @property
    def in_use(self) -> int:
        with self._lock:
            return sum(1 for held in self._held if held.is_alive())
