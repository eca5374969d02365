"""Delivery of result objects to destinations: one row per (run, destination, object), so nothing is forgotten across
restarts, a destination that is down never blocks the others, and what was delivered is never sent again."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.network import DicomAddress
from dicom_node.scu import DeliveryError, DeliveryReport, RetryPolicy, StorageSCU
from service.db.counters import DELIVERIES_FAILED, add_to_counter
from service.db.models import Delivery, utcnow
from service.db.session import session_scope

__all__ = ["ResultObject", "DeliveryQueue", "DeliveryOutcome", "Sender", "default_sender", "DEFAULT_SEND_RETRY"]

LOGGER = logging.getLogger(__name__)


class Sender(Protocol):
    """What sends files (``dicom_node.scu.StorageSCU``)."""

    def send(self, destination: DicomAddress, paths: Iterable[str | Path]) -> DeliveryReport: ...


#: Few quick tries per delivery attempt: the deliver stage (the executor) and the review's delivery (the sweeper)
#: retry with back-off around them.
DEFAULT_SEND_RETRY = RetryPolicy(attempts=2, first_delay=0.5, max_delay=2.0)


def default_sender(calling_ae: str) -> StorageSCU:
    """The one sender every part uses: C-STORE as ``calling_ae`` with :data:`DEFAULT_SEND_RETRY`. A compressed result
    (a JPEG 2000 SEG) goes decompressed to a destination that takes it only uncompressed."""
    return StorageSCU(calling_ae, retry=DEFAULT_SEND_RETRY, connection_timeout=5.0, decompress_when_refused=True)


@dataclass(frozen=True)
class ResultObject:
    sop_instance_uid: str
    path: Path  # absolute


@dataclass(frozen=True)
class DeliveryOutcome:
    delivered: int
    failed: dict[str, str]  # destination -> the error of its last attempt

    @property
    def complete(self) -> bool:
        return not self.failed


class DeliveryQueue:
    def __init__(self, session_factory: sessionmaker[Session], sender: Sender) -> None:
        self.session_factory = session_factory
        self.sender = sender

    @staticmethod
    def add(session: Session, run_id: int, destinations: Sequence[DicomAddress], objects: Sequence[ResultObject]) -> int:
        """Record what must go where (in the caller's transaction); rows already there are kept as they are."""
        existing = {
            (d, uid) for d, uid in session.execute(
                select(Delivery.destination, Delivery.sop_instance_uid).where(Delivery.run_id == run_id)
            )
        }
        added = 0
        for destination in destinations:
            for obj in objects:
                key = (str(destination), obj.sop_instance_uid)
                if key in existing:
                    continue
                session.add(Delivery(run_id=run_id, destination=key[0], sop_instance_uid=obj.sop_instance_uid,
                                     path=str(obj.path)))
                existing.add(key)
                added += 1
        return added

    def pending_runs(self) -> list[int]:
        with session_scope(self.session_factory) as session:
            return sorted(set(session.execute(select(Delivery.run_id).where(Delivery.status != "delivered")).scalars()))

    def send_pending(self, run_id: int) -> DeliveryOutcome:
        """Send every undelivered object of the run, destination by destination."""
        with session_scope(self.session_factory) as session:
            rows = session.execute(
                select(Delivery.id, Delivery.destination, Delivery.path)
                .where(Delivery.run_id == run_id, Delivery.status != "delivered")
                .order_by(Delivery.id)
            ).all()
        by_destination: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for row_id, destination, path in rows:
            by_destination[destination].append((row_id, path))
        delivered = 0
        failed: dict[str, str] = {}
        for destination, items in by_destination.items():
            errors = self._send_to(run_id, destination, items)
            delivered += len(items) - len(errors)
            if errors:
                failed[destination] = next(iter(errors.values()))
        return DeliveryOutcome(delivered, failed)

    def _send_to(self, run_id: int, destination: str, items: list[tuple[int, str]]) -> dict[int, str]:
        paths = {path: row_id for row_id, path in items}
        errors: dict[int, str] = {}
        statuses: dict[int, tuple[bool, str]] = {}
        try:
            report = self.sender.send(DicomAddress.parse(destination), list(paths))
            for outcome in report.outcomes:
                row_id = paths[str(outcome.path)]
                statuses[row_id] = (outcome.delivered, outcome.error or (f"status 0x{outcome.status:04X}"
                                                                         if outcome.status is not None else ""))
        except (DeliveryError, OSError, ValueError) as exc:
            statuses = {row_id: (False, str(exc)) for row_id, _ in items}
        with session_scope(self.session_factory) as session:
            for row in session.execute(select(Delivery).where(Delivery.id.in_(list(statuses)))).scalars():
                ok, error = statuses[row.id]
                row.attempts += 1
                if ok:
                    row.status = "delivered"
                    row.delivered_at = utcnow()
                    row.last_error = ""
                else:
                    row.status = "failed"
                    row.last_error = error[:2000]
                    errors[row.id] = error
            if errors:
                add_to_counter(session, DELIVERIES_FAILED, destination, len(errors))
        if errors:
            LOGGER.warning("run %s: %d object(s) not delivered to %s", run_id, len(errors), destination)
        return errors
