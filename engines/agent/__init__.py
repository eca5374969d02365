"""The VILA-M3 expert-consultation agent: first turn, trigger, expert result, feedback turn, transcript."""

from engines.agent.agent import ConsultationAgent
from engines.agent.expert_call import PendingExpertResult
from engines.agent.prompts import Modality
from engines.agent.rendering import (
    FirstTurnImages,
    ImageForm,
    ProtocolImageRenderer,
    RenderedOverlay,
    StudyImageRenderer,
)
from engines.agent.request import AgentSettings, Consultation, ConsultationRequest, SlicePolicy
from engines.agent.transcript import ExpertSource, Outcome, OutcomeReason, Transcript
from engines.agent.triggers import Trigger, TriggerError, TriggerKind, TriggerProblem, parse_trigger

__all__ = [
    "AgentSettings",
    "Consultation",
    "ConsultationAgent",
    "ConsultationRequest",
    "ExpertSource",
    "FirstTurnImages",
    "ImageForm",
    "Modality",
    "Outcome",
    "OutcomeReason",
    "PendingExpertResult",
    "ProtocolImageRenderer",
    "RenderedOverlay",
    "SlicePolicy",
    "StudyImageRenderer",
    "Transcript",
    "Trigger",
    "TriggerError",
    "TriggerKind",
    "TriggerProblem",
    "parse_trigger",
]
