"""Does the configured VLM backend answer as the in-process model does? (``m3edge vlm check``)

The same six conversations go to both backends: for a CT slice, a chest radiograph and the four sequences of a brain
MR (``engines.vlm.check_inputs``), the first turn, and the feedback turn after a fixed trigger answer with the expert's
result (overlay and legend, or CXR predictions), built by the agent's own prompt code in the placeholder form and with
the BraTS images the settings choose. Each is answered greedily, with log-probabilities; per conversation the check
compares the generated tokens (equal, or where they first differ) and the log-probability of the first token (the
first step of the answer, before anything generated can diverge). The verdict: ``agree`` when every conversation's
tokens are equal and every first-token log-probability is within the tolerance, else ``disagree``.

``min_new_tokens`` is 0 here, so that both sides' log-probabilities come from the model's untouched first step.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from engines.vlm.base import Conversation, Generation, GenerationConfig, Role, VisionLanguageModel, VlmError

__all__ = ["CheckCase", "CaseResult", "CheckReport", "Verdict", "check_cases", "compare_backends"]

_ANSWERS = {  # the trigger answers of the training data (protocol section 4)
    "CT": "This looks like a CT image. Let me trigger <VISTA3D(hepatic tumor)>.",
    "CXR": "This looks like an chest x-ray. Let me first trigger <CXR()>.",
    "MRI": "This looks like an MRI image sequence. Let me first trigger <BRATS()>.",
}
_QUESTIONS = {"CT": "Is there a hepatic tumor in this image?", "CXR": "Describe the image in detail.",
              "MRI": "What abnormality is seen in these images?"}


class Verdict(str, enum.Enum):
    AGREE = "agree"
    DISAGREE = "disagree"


@dataclass(frozen=True)
class CheckCase:
    name: str  # e.g. "ct/turn-1"
    conversation: Conversation


@dataclass
class CaseResult:
    name: str
    reference_tokens: list[str]
    candidate_tokens: list[str]
    first_difference: int | None  # index of the first token that differs (None: the same tokens)
    reference_first_logprob: float | None
    candidate_first_logprob: float | None
    error: str = ""

    @property
    def tokens_equal(self) -> bool:
        return not self.error and self.first_difference is None

    @property
    def first_logprob_difference(self) -> float | None:
        if self.reference_first_logprob is None or self.candidate_first_logprob is None:
            return None
        return abs(self.reference_first_logprob - self.candidate_first_logprob)


@dataclass
class CheckReport:
    reference: str  # backend names
    candidate: str
    tolerance: float
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def verdict(self) -> Verdict:
        for case in self.cases:
            difference = case.first_logprob_difference
            if not case.tokens_equal or difference is None or difference > self.tolerance:
                return Verdict.DISAGREE
        return Verdict.AGREE if self.cases else Verdict.DISAGREE

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict.value,
                "cases": [{**asdict(case), "tokens_equal": case.tokens_equal,
                           "first_logprob_difference": case.first_logprob_difference} for case in self.cases]}


def check_cases(template: str, placeholder_form: str = "training", brats_images: str = "as_trained") -> list[CheckCase]:
    """The six conversations: first and feedback turn for the CT slice, the radiograph and the brain MR."""
    from engines.agent import prompts
    from engines.agent.rendering import BratsImages
    from engines.vlm.check_inputs import SEQUENCES, load_check_inputs

    inputs = load_check_inputs()
    cards = prompts.load_model_cards()
    form = prompts.PlaceholderForm(placeholder_form)
    brain = [inputs.images["brain_T1c"]] * 4 if BratsImages(brats_images) is BratsImages.AS_TRAINED else [
        inputs.images[f"brain_{name}"] for name in SEQUENCES]
    first = {
        "ct": (prompts.first_turn_text(_QUESTIONS["CT"], "CT", cards), [inputs.images["ct_slice"]], "CT"),
        "cxr": (prompts.first_turn_text(_QUESTIONS["CXR"], "CXR", cards), [inputs.images["cxr"]], "CXR"),
        "brain-mr": (prompts.brats_first_turn_text(_QUESTIONS["MRI"], cards), brain, "MRI"),
    }
    feedback = {
        "ct": (prompts.vista3d_feedback_text(prompts.vista3d_legend_text(inputs.ct_legend), _QUESTIONS["CT"]),
               [inputs.images["ct_overlay"]]),
        "cxr": (prompts.cxr_feedback_text(inputs.cxr_scores, _QUESTIONS["CXR"]), []),
        "brain-mr": (prompts.brats_feedback_text(_QUESTIONS["MRI"], prompts.brats_legend_text(inputs.brats_colours)),
                     [inputs.images["brain_overlay"]]),
    }
    cases = []
    for name, (text, images, modality) in first.items():
        opening = prompts.text_as_sent(text, form)
        cases.append(CheckCase(f"{name}/turn-1", Conversation(template).add(Role.USER, opening, tuple(images))))
        reply, reply_images = feedback[name]
        conversation = (Conversation(template).add(Role.USER, opening, tuple(images))
                        .add(Role.ASSISTANT, _ANSWERS[modality])
                        .add(Role.USER, prompts.text_as_sent(reply, form), tuple(reply_images)))
        cases.append(CheckCase(f"{name}/turn-2", conversation))
    return cases


def _first_difference(reference: Sequence[str], candidate: Sequence[str]) -> int | None:
    for index, (a, b) in enumerate(zip(reference, candidate)):
        if a != b:
            return index
    return None if len(reference) == len(candidate) else min(len(reference), len(candidate))


def _generate(model: VisionLanguageModel, case: CheckCase, config: GenerationConfig) -> Generation:
    generation = model.generate(case.conversation, config)
    if not generation.tokens or len(generation.token_logprobs) != len(generation.tokens):
        raise VlmError(f"{generation.backend} returned no token log-probabilities: it cannot be checked")
    return generation


def compare_backends(reference: VisionLanguageModel, candidate: VisionLanguageModel, cases: Sequence[CheckCase],
                     *, max_new_tokens: int = 16, tolerance: float = 0.1, top_logprobs: int = 5,
                     timeout_s: float = 300.0) -> CheckReport:
    """Each case through both backends, greedy, ``max_new_tokens`` each; a backend failure is that case's error."""
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a non-negative number of nats, got {tolerance}")
    config = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=0, temperature=0.0, timeout_s=timeout_s,
                              logprobs=top_logprobs)
    report = CheckReport(getattr(reference, "backend_name", type(reference).__name__),
                         getattr(candidate, "backend_name", type(candidate).__name__), tolerance)
    for case in cases:
        try:
            expected = _generate(reference, case, config)
            actual = _generate(candidate, case, config)
        except (VlmError, RuntimeError, OSError) as error:
            report.cases.append(CaseResult(case.name, [], [], None, None, None, f"{type(error).__name__}: {error}"))
            continue
        report.cases.append(CaseResult(
            case.name, list(expected.tokens), list(actual.tokens),
            _first_difference(expected.tokens, actual.tokens),
            float(expected.token_logprobs[0]), float(actual.token_logprobs[0]),
        ))
    return report

