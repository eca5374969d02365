"""The agent with the project's real CXR expert (the demo ensemble: eight small ONNX networks with TorchXRayVision's
names and pathology lists, run by onnxruntime): its scores must become the training-form feedback turn."""

from __future__ import annotations

import numpy as np
import pytest

from engines.agent import ConsultationAgent, ConsultationRequest, ExpertSource, Modality, Outcome
from engines.experts.base import ExpertInput
from tests.unit.engines.test_agent_doubles import ScriptedModel

pytestmark = pytest.mark.slow

QUESTION = "Describe the image in detail."
TRIGGER = "This looks like an chest x-ray. Let me first trigger <CXR()>."
# The 18 pathologies in the training order (torchxrayvision default_pathologies with Pneumothorax moved last).
TRAINING_ORDER = [
    "atelectasis",
    "consolidation",
    "infiltration",
    "edema",
    "emphysema",
    "fibrosis",
    "effusion",
    "pneumonia",
    "pleural thickening",
    "cardiomegaly",
    "nodule",
    "mass",
    "hernia",
    "lung lesion",
    "fracture",
    "lung opacity",
    "enlarged cardiomediastinum",
    "pneumothorax",
]
SUFFIX = ". Analyze the image and take these predictions into account when responding to this prompt:\n" + QUESTION


@pytest.fixture(scope="module")
def cxr_expert(tmp_path_factory):
    from engines.experts.cxr import CxrExpert
    from engines.model_store.demo import write_cxr_demo

    expert = CxrExpert(write_cxr_demo(tmp_path_factory.mktemp("models") / "cxr"), backend="onnxruntime")
    yield expert
    expert.release()


def _radiograph() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, size=(256, 256), dtype=np.uint8)


def test_real_cxr_scores_become_the_training_form_feedback(cxr_expert):
    model = ScriptedModel(TRIGGER, "No acute cardiopulmonary process.")
    request = ConsultationRequest(QUESTION, Modality.CXR, ExpertInput(_radiograph()))
    consultation = ConsultationAgent(model, [cxr_expert], template="llama_3").consult(request)
    transcript = consultation.transcript
    assert transcript.outcome is Outcome.ANSWERED_WITH_EXPERT
    assert transcript.expert_call.source is ExpertSource.RAN
    assert transcript.expert_call.result.demo is True
    feedback = model.user_texts(1)[1]
    assert feedback.startswith("The resulting predictions are:\n") and feedback.endswith(SUFFIX)
    lines = feedback[len("The resulting predictions are:\n") : -len(SUFFIX)].split("\n")
    assert lines[-1] == ""  # every line ends with "\n", then "." follows
    scores = {name.lower().replace("_", " "): score for name, score in consultation.expert_result.scores.items()}
    assert [line.split(": ")[0] for line in lines[:-1]] == TRAINING_ORDER
    assert [line.split(": ")[1] for line in lines[:-1]] == [
        "yes" if scores[name] > 0.5 else "no" for name in TRAINING_ORDER
    ]


def test_a_result_the_service_already_has_is_reused_and_its_time_recorded_as_saved(cxr_expert):
    ready = cxr_expert.run(ExpertInput(_radiograph()))  # the route's expert, run by the service before the agent
    model = ScriptedModel(TRIGGER, "No acute cardiopulmonary process.")
    request = ConsultationRequest(QUESTION, Modality.CXR, ExpertInput(_radiograph()), ready_results=[ready])
    call = ConsultationAgent(model, [cxr_expert], template="llama_3").consult(request).transcript.expert_call
    assert call.source is ExpertSource.PROVIDED
    assert call.saved_s == pytest.approx(sum(ready.timings.values()))
    assert call.run_s is None
