"""Stage ``deliver``: the run's objects (SEG, SC, then SR) go by C-STORE to each destination of the route.

One delivery row per (run, destination, object) is recorded first, so a restart resumes where it stopped and nothing
delivered is sent again. A destination that is down never blocks the others; while one is still failing the stage raises
``TransientStageError`` and the executor retries it with back-off (the next attempt sends only what is missing).
"""

from __future__ import annotations

import logging
from pathlib import Path

from dicom_node.network import DicomAddress
from service.db.session import session_scope
from service.pipeline.contracts import DeliveryResult, ReportResult, Route
from service.pipeline.delivery import DeliveryQueue, ResultObject, Sender
from service.pipeline.executor import StageOutcome
from service.pipeline.ledger import StageClaim
from service.pipeline.stages import TransientStageError
from service.pipeline.work.resources import StageResources

__all__ = ["DeliverStage"]

LOGGER = logging.getLogger(__name__)


class DeliverStage:
    def __init__(self, resources: StageResources, sender: Sender) -> None:
        self.resources = resources
        self.queue = DeliveryQueue(resources.session_factory, sender)

    def __call__(self, claim: StageClaim) -> StageOutcome:
        destinations = [DicomAddress.parse(d) for d in Route.of(claim).destinations]
        objects = [ResultObject(o.sop_instance_uid, Path(o.path)) for o in ReportResult.of(claim).objects]
        if not destinations:
            LOGGER.warning("study %s: no destination configured (DESTINATIONS or the rule's destinations); the "
                           "report stays in m3edge", claim.study_uid)
            return StageOutcome(result=DeliveryResult(destinations=[], delivered=0))
        with session_scope(self.resources.session_factory) as session:
            DeliveryQueue.add(session, claim.run_id, destinations, objects)
        outcome = self.queue.send_pending(claim.run_id)
        if outcome.failed:
            shown = "; ".join(f"{d}: {e}" for d, e in sorted(outcome.failed.items()))
            raise TransientStageError(f"not delivered to {len(outcome.failed)} destination(s): {shown}"[:2000])
        LOGGER.info("study %s: %d object(s) delivered to %d destination(s)", claim.study_uid, outcome.delivered,
                    len(destinations))
        return StageOutcome(result=DeliveryResult(destinations=[str(d) for d in destinations],
                                                  delivered=outcome.delivered))
