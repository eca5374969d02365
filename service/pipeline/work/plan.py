"""Stage ``plan``: the routing rules decide which expert, argument, questions, destinations and priority a study gets.

The route (``contracts.Route``) is the stage's result, kept on the run too (``PipelineRun.route``); a study that no
rule takes ends ``skipped`` with the reason the rules give (which test of each rule failed, e.g. "anatomy: no series
shows chest (BodyPartExamined 'EXTREMITY' is not chest ...)"). The route names the series that passed the rule's series tests and anatomy
(``eligible_series``): ``prepare`` takes its input from those only.
"""

from __future__ import annotations

import logging

from dicom_node.facts import facts_from_files
from service.destinations import DestinationsStore
from service.pipeline.contracts import Route
from service.pipeline.executor import StageOutcome
from service.pipeline.ledger import StageClaim
from service.pipeline.stages import StudySkipped
from service.pipeline.work.resources import StageResources

__all__ = ["PlanStage", "AGENT_MODALITY"]

LOGGER = logging.getLogger(__name__)

# The modality word of the agent's first turn, and whether the four BraTS sequences are shown, per expert.
AGENT_MODALITY = {"VISTA3D": ("CT", False), "BRATS": ("MRI", True), "CXR": ("CXR", False)}


class PlanStage:
    def __init__(self, resources: StageResources) -> None:
        from service.routing.store import RoutingRulesStore

        self.resources = resources
        self._store = RoutingRulesStore(resources.settings)

    def rules(self):
        """The rules in force, re-read when their file changes (an administrator may save new ones while we run)."""
        return self._store.load()

    def __call__(self, claim: StageClaim) -> StageOutcome:
        from service.routing import route_study

        files = self.resources.series_files(claim.study_uid)
        decision = route_study(self.rules(), facts_from_files(claim.study_uid, files))
        if decision.rule is None:
            raise StudySkipped(decision.skipped_reason)
        rule = decision.rule
        destinations = [str(d) for d in (rule.destinations if rule.destinations is not None
                                          else DestinationsStore(self.resources.settings).load())]
        modality, brats = AGENT_MODALITY[rule.expert]
        route = Route(rule=rule.name, expert=rule.expert, argument=rule.argument, questions=list(rule.questions),
                      destinations=destinations, priority=rule.priority, matched_series=dict(decision.matched_series),
                      eligible_series=list(decision.eligible_series), modality=modality, brats_sequences=brats)
        LOGGER.info("study %s: rule %s -> %s%s, %d destination(s), %s", claim.study_uid, rule.name, rule.expert,
                    f"({rule.argument})" if rule.argument else "", len(destinations), rule.priority.value)
        return StageOutcome(result=route, route=route.recorded(), priority=rule.priority.value)
