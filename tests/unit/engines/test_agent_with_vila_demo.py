"""The agent against the real in-process VILA backend (a tiny random-weight checkpoint in the published layout).

Random weights cannot be told to trigger an expert, so the second test scripts only the first answer (a thin test double
around the real model) and lets the real model generate turn 2 over both images: the real backend must accept the
agent's two-turn conversation, and the prompt it reports must be the agent's own templated prompt, byte for byte.
"""

from __future__ import annotations

import numpy as np
import pytest

from engines.agent import AgentSettings, ConsultationAgent, ConsultationRequest, Modality, Outcome
from engines.experts.base import ExpertInput, ExpertName
from engines.vlm.base import Conversation, Generation, GenerationConfig
from tests.unit.engines.test_agent_doubles import IDENTITY, FixedLabelExpert, ct_study

pytestmark = pytest.mark.slow

SETTINGS = AgentSettings(max_new_tokens=6, min_new_tokens=2, max_total_new_tokens=12)


@pytest.fixture(scope="module")
def vila_demo(tmp_path_factory):
    from engines.vlm.demo import write_demo_checkpoint
    from engines.vlm.model import VilaM3

    directory = write_demo_checkpoint(tmp_path_factory.mktemp("vila") / "agent-demo", "llama_3", image_size=70)
    return VilaM3(directory, template="llama_3", device="cpu", dtype="float32")


class FirstAnswerScripted:
    """TEST DOUBLE around the real model: turn 1 answers with a fixed trigger, later turns go to the real model."""

    def __init__(self, model, first_answer: str) -> None:
        self._model, self._first_answer, self.calls = model, first_answer, 0

    def generate(self, conversation: Conversation, config: GenerationConfig = GenerationConfig()) -> Generation:
        self.calls += 1
        real = self._model.generate(conversation, config)
        if self.calls > 1:
            return real
        return Generation(
            self._first_answer, real.prompt, real.prompt_tokens, 5, "stop_token", 0.0, 0.0, real.backend, real.model
        )


def _request() -> ConsultationRequest:
    volume, _ = ct_study()
    return ConsultationRequest("Describe the image in detail.", Modality.CT, ExpertInput(volume, IDENTITY))


def test_a_random_model_ends_in_a_recorded_outcome_with_the_agents_exact_prompt(vila_demo):
    transcript = ConsultationAgent(vila_demo, [], template="llama_3", settings=SETTINGS).consult(_request()).transcript
    # no expert is configured: whatever the random model says, it can only end without one (or cut off)
    assert transcript.outcome in {Outcome.ANSWER_TRUNCATED, Outcome.ANSWERED_WITHOUT_EXPERT}
    assert transcript.reason is not None
    assert transcript.final_answer == transcript.turns[0].answer
    assert transcript.backend == "vila-torch-cpu"
    assert transcript.turns[0].backend_prompt == transcript.turns[0].templated_prompt
    assert transcript.turns[0].completion_tokens <= SETTINGS.max_new_tokens


def test_the_real_backend_takes_the_feedback_turn_with_the_overlay(vila_demo):
    _, labels = ct_study()
    expert = FixedLabelExpert(ExpertName.VISTA3D, labels, {1: "liver", 26: "hepatic tumor", 20: "lung"})
    model = FirstAnswerScripted(vila_demo, "Let me trigger <VISTA3D(hepatic tumor)>.")
    consultation = ConsultationAgent(model, [expert], template="llama_3", settings=SETTINGS).consult(_request())
    transcript = consultation.transcript
    assert model.calls == 2
    assert len(transcript.turns) == 2
    second = transcript.turns[1]
    assert second.backend_prompt == second.templated_prompt
    assert second.backend_prompt.count("<image>") == 2
    assert "The colors in this image describe red: liver, blue: hepatic tumor." in second.backend_prompt
    assert transcript.outcome in {Outcome.ANSWERED_WITH_EXPERT, Outcome.ANSWER_TRUNCATED}
    assert isinstance(consultation.overlay, np.ndarray)
