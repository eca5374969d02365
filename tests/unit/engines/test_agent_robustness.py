"""Where the reference is fragile: every bad trigger, expert or model behaviour ends in a recorded outcome."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engines.agent import (
    AgentSettings,
    ConsultationAgent,
    ConsultationRequest,
    Modality,
    Outcome,
    OutcomeReason,
)
from engines.experts.base import ExpertError, ExpertInput, ExpertName
from tests.unit.engines.test_agent_doubles import (
    IDENTITY,
    FixedLabelExpert,
    FixedScoresExpert,
    Scripted,
    ScriptedModel,
    ct_study,
    cxr_image,
    failing_model_error,
)
from tests.unit.engines.test_prompts import CXR_SCORES_SORTED

QUESTION = "Is there a hepatic tumor in this image?"
TRIGGER = "This looks like a CT image. Let me trigger <VISTA3D(hepatic tumor)>. "
FINAL = "Yes, there is a hepatic tumor."
NAMES = {1: "liver", 26: "hepatic tumor", 20: "lung"}


def _ct_request() -> ConsultationRequest:
    volume, _ = ct_study()
    return ConsultationRequest(QUESTION, Modality.CT, ExpertInput(volume, IDENTITY))


def _vista3d(**kwargs) -> FixedLabelExpert:
    _, labels = ct_study()
    return FixedLabelExpert(ExpertName.VISTA3D, kwargs.pop("label_volume", labels), dict(NAMES), **kwargs)


def _consult(model, experts, request=None, **settings):
    agent = ConsultationAgent(model, experts, template="llama_3", settings=AgentSettings(**settings))
    return agent.consult(request or _ct_request())


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("The liver looks normal.", OutcomeReason.NO_TRIGGER),
        ("Let me trigger <TotalSegmentator(liver)>.", OutcomeReason.UNKNOWN_EXPERT),
        ("Let me trigger <VISTA3D(organs)> and then <CXR()>.", OutcomeReason.MULTIPLE_TAGS),
        ("Let me trigger <VISTA3D(kidney stones)>.", OutcomeReason.INVALID_ARGUMENT),
        ("Let me trigger <VISTA3D(hepatic tumor>.", OutcomeReason.INVALID_ARGUMENT),
        ("Let me trigger <>.", OutcomeReason.UNKNOWN_EXPERT),
        ("Let me trigger <CXR or VISTA3D>.", OutcomeReason.AMBIGUOUS_EXPERT),
        ("This looks like a cell image. Let me trigger <VISTA2D()>.", OutcomeReason.UNSERVED_EXPERT),
    ],
)
def test_an_answer_without_a_usable_trigger_is_final_and_no_expert_runs(answer, reason):
    model, expert = ScriptedModel(answer), _vista3d()
    transcript = _consult(model, [expert]).transcript
    assert transcript.outcome is Outcome.ANSWERED_WITHOUT_EXPERT
    assert transcript.reason is reason
    assert transcript.final_answer == answer
    assert len(model.conversations) == 1
    assert expert.calls == []
    assert transcript.expert_call is None


def test_a_bad_trigger_records_the_problem_and_the_tags_seen():
    transcript = _consult(ScriptedModel("<VISTA3D(organs)> <CXR()>"), [_vista3d()]).transcript
    assert transcript.trigger.kind == "invalid"
    assert transcript.trigger.problem == "multiple_tags"
    assert transcript.trigger.tag == "VISTA3D(organs) | CXR()"
    assert "exactly one is allowed" in transcript.detail


@pytest.mark.parametrize(
    ("error", "reason", "detail"),
    [
        (ExpertError("CUDA out of memory on the expert GPU"), OutcomeReason.EXPERT_FAILED, "CUDA out of memory"),
        (ValueError("label group 'organs' needs a CT volume"), OutcomeReason.EXPERT_FAILED, "needs a CT volume"),
        (KeyError("weights"), OutcomeReason.EXPERT_CRASHED, "raised KeyError"),
    ],
)
def test_an_expert_that_fails_leaves_the_first_answer_final(error, reason, detail):
    model = ScriptedModel(TRIGGER, FINAL)
    transcript = _consult(model, [_vista3d(error=error)]).transcript
    assert transcript.outcome is Outcome.ANSWERED_WITHOUT_EXPERT
    assert transcript.reason is reason
    assert detail in transcript.detail
    assert transcript.final_answer == TRIGGER
    assert len(model.conversations) == 1
    assert transcript.expert_call.source is None and detail in transcript.expert_call.error


def test_an_expert_that_outlives_its_timeout_is_abandoned_and_recorded():
    release = threading.Event()
    expert = _vista3d(release=release)
    model = ScriptedModel(TRIGGER, FINAL)
    try:
        transcript = _consult(model, [expert], expert_timeout_s=0.05).transcript
    finally:
        release.set()
    assert transcript.outcome is Outcome.ANSWERED_WITHOUT_EXPERT
    assert transcript.reason is OutcomeReason.EXPERT_TIMED_OUT
    assert "did not finish within 0.05 s" in transcript.detail
    assert transcript.expert_call.timeout_s == 0.05
    assert len(model.conversations) == 1


def test_an_expert_nobody_configured_is_recorded():
    transcript = _consult(ScriptedModel(TRIGGER, FINAL), [FixedScoresExpert(CXR_SCORES_SORTED)]).transcript
    assert transcript.reason is OutcomeReason.EXPERT_NOT_CONFIGURED
    assert "no VISTA3D expert is configured" in transcript.detail


@pytest.mark.parametrize(
    ("expert", "detail"),
    [
        (_vista3d(label_volume=None), "has no label volume"),
        (_vista3d(label_volume=np.zeros((4, 4, 4), dtype=np.uint8)), "must have the volume's shape"),
        (FixedLabelExpert(ExpertName.VISTA3D, np.full((8, 8, 6), 200, dtype=np.uint8)), "no name for label ids [200]"),
    ],
)
def test_an_expert_result_that_cannot_be_drawn_is_recorded(expert, detail):
    transcript = _consult(ScriptedModel(TRIGGER, FINAL), [expert]).transcript
    assert transcript.outcome is Outcome.ANSWERED_WITHOUT_EXPERT
    assert transcript.reason is OutcomeReason.EXPERT_RESULT_UNUSABLE
    assert detail in transcript.detail


def test_label_names_missing_from_a_vista3d_result_come_from_the_vista3d_label_list():
    _, labels = ct_study()
    expert = FixedLabelExpert(ExpertName.VISTA3D, labels, {26: "liver tumor (as the expert names it)"})
    model = ScriptedModel(TRIGGER, FINAL)
    transcript = _consult(model, [expert]).transcript
    assert transcript.outcome is Outcome.ANSWERED_WITH_EXPERT
    assert transcript.expert_call.overlay_legend == [["red", "liver"], ["blue", "liver tumor (as the expert names it)"]]


def test_a_segmentation_expert_asked_about_a_radiograph_is_recorded_not_drawn():
    _, labels = ct_study()
    request = ConsultationRequest("Describe the image in detail.", Modality.CXR, ExpertInput(cxr_image()))
    expert = FixedLabelExpert(ExpertName.VISTA3D, labels, dict(NAMES))
    transcript = _consult(ScriptedModel("Let me trigger <VISTA3D()>.", FINAL), [expert], request).transcript
    assert transcript.reason is OutcomeReason.EXPERT_RESULT_UNUSABLE
    assert "a radiograph has no slices" in transcript.detail
    assert expert.calls == ["everything"]


@pytest.mark.parametrize(
    ("step", "detail"),
    [
        (failing_model_error(), "VlmError: the test-double server answered 503"),
        (Scripted(error=RuntimeError("CUDA out of memory")), "RuntimeError: CUDA out of memory"),
        (Scripted(error=TimeoutError("no answer in 300 s")), "TimeoutError: no answer in 300 s"),
        (Scripted(error=ConnectionRefusedError("connection refused")), "ConnectionRefusedError: connection refused"),
    ],
)
def test_a_model_error_in_turn_1_is_a_model_failure(step, detail):
    transcript = _consult(ScriptedModel(step), [_vista3d()]).transcript
    assert transcript.outcome is Outcome.MODEL_FAILED
    assert transcript.reason is OutcomeReason.TURN_1_MODEL_ERROR
    assert detail in transcript.detail
    assert transcript.final_answer == ""
    assert [(turn.stopped_by, turn.answer) for turn in transcript.turns] == [("error", "")]
    assert transcript.turns[0].user_text.endswith("This is a CT image.\nIs there a hepatic tumor in this image?")


def test_the_stages_soft_time_limit_in_a_model_call_is_not_recorded_as_a_model_failure():
    """The pipeline's soft limit arrives as StageTimedOut inside generate(): the stage must stop there."""
    from service.pipeline.time_limits import StageTimedOut

    with pytest.raises(StageTimedOut):
        _consult(ScriptedModel(Scripted(error=StageTimedOut("vlm", 1770))), [_vista3d()])


def test_a_model_error_in_turn_2_keeps_the_expert_result():
    consultation = _consult(ScriptedModel(TRIGGER, failing_model_error()), [_vista3d()])
    transcript = consultation.transcript
    assert transcript.outcome is Outcome.MODEL_FAILED
    assert transcript.reason is OutcomeReason.TURN_2_MODEL_ERROR
    assert [turn.stopped_by for turn in transcript.turns] == ["stop_token", "error"]
    assert transcript.turns[1].user_text.startswith("The results are <image>\n.")
    assert consultation.expert_result is not None
    assert transcript.expert_call.source.value == "ran"


def test_a_truncated_first_answer_is_not_parsed():
    endless = Scripted(TRIGGER + "and then " * 50, stopped_by="max_new_tokens", completion_tokens=1024)
    expert = _vista3d()
    model = ScriptedModel(endless, FINAL)
    transcript = _consult(model, [expert]).transcript
    assert transcript.outcome is Outcome.ANSWER_TRUNCATED
    assert transcript.reason is OutcomeReason.TURN_1_TRUNCATED
    assert transcript.trigger.kind == "unparsed"
    assert expert.calls == []
    assert len(model.conversations) == 1


def test_a_truncated_second_answer_is_kept_and_flagged():
    endless = Scripted("The liver " * 100, stopped_by="max_new_tokens", completion_tokens=1024)
    transcript = _consult(ScriptedModel(TRIGGER, endless), [_vista3d()]).transcript
    assert transcript.outcome is Outcome.ANSWER_TRUNCATED
    assert transcript.reason is OutcomeReason.TURN_2_TRUNCATED
    assert transcript.final_answer.startswith("The liver The liver")


def test_the_second_answer_is_never_parsed_again():
    expert = _vista3d()
    model = ScriptedModel(TRIGGER, "Let me also trigger <VISTA3D(organs)>.")
    transcript = _consult(model, [expert]).transcript
    assert transcript.outcome is Outcome.ANSWERED_WITH_EXPERT
    assert transcript.final_answer == "Let me also trigger <VISTA3D(organs)>."
    assert expert.calls == ["hepatic tumor"]
    assert len(model.conversations) == 2


def test_segmented_answer_shows_the_overlay_without_a_second_pass():
    expert = _vista3d()
    answer = "I segmented the liver and any tumor using <VISTA3D(hepatic tumor)>."
    model = ScriptedModel(answer)
    consultation = _consult(model, [expert])
    transcript = consultation.transcript
    assert transcript.outcome is Outcome.SEGMENTED_NO_SECOND_PASS
    assert transcript.reason is None
    assert transcript.final_answer == answer
    assert len(model.conversations) == 1
    assert expert.calls == ["hepatic tumor"]
    assert consultation.overlay is not None
    assert transcript.expert_call.overlay_legend == [["red", "liver"], ["blue", "hepatic tumor"]]


def test_max_turns_one_never_runs_a_second_pass():
    expert = _vista3d()
    transcript = _consult(ScriptedModel(TRIGGER, FINAL), [expert], max_turns=1).transcript
    assert transcript.outcome is Outcome.ANSWERED_WITHOUT_EXPERT
    assert transcript.reason is OutcomeReason.TURN_LIMIT
    assert expert.calls == []


def test_the_total_token_budget_bounds_the_second_turn():
    first = Scripted(TRIGGER, completion_tokens=60)
    model = ScriptedModel(first, FINAL)
    transcript = _consult(model, [_vista3d()], max_new_tokens=64, max_total_new_tokens=100).transcript
    assert [config.max_new_tokens for config in model.configs] == [64, 40]
    assert transcript.turns[1].max_new_tokens == 40
    assert transcript.outcome is Outcome.ANSWERED_WITH_EXPERT


def test_an_exhausted_token_budget_stops_before_the_expert_runs():
    expert = _vista3d()
    first = Scripted(TRIGGER, completion_tokens=63)
    transcript = _consult(ScriptedModel(first, FINAL), [expert], max_new_tokens=64, max_total_new_tokens=64).transcript
    assert transcript.reason is OutcomeReason.TOKEN_LIMIT
    assert "turn 1 used 63 of max_total_new_tokens 64" in transcript.detail
    assert expert.calls == []


def test_the_cxr_expert_on_a_ct_volume_fails_cleanly():
    request = _ct_request()
    transcript = _consult(ScriptedModel("Let me trigger <CXR()>.", FINAL), [FixedScoresExpert({})], request).transcript
    assert transcript.reason is OutcomeReason.EXPERT_FAILED
    assert "one 2D radiograph" in transcript.detail


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_turns": 3}, "max_turns must be 1 or 2"),
        ({"min_new_tokens": 10, "max_new_tokens": 5}, "min_new_tokens 10 exceeds max_new_tokens 5"),
        ({"max_new_tokens": 100, "max_total_new_tokens": 50}, "must be at least max_new_tokens 100"),
        ({"expert_timeout_s": 0}, "must be positive"),
        ({"slice_policy": "best"}, "'best' is not a valid SlicePolicy"),
    ],
)
def test_settings_refuse_values_that_would_break_the_bounds(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AgentSettings(**kwargs)


@pytest.mark.parametrize(
    ("modality", "volume", "affine", "brats", "message"),
    [
        (Modality.CT, np.zeros((4, 4), dtype=np.float32), IDENTITY, False, "needs an \\(X, Y, Z\\) volume"),
        (Modality.CT, np.zeros((4, 4, 4), dtype=np.float32), None, False, "needs its affine"),
        (Modality.CXR, np.zeros((4, 4), dtype=np.float32), None, False, "needs an \\(H, W\\) uint8 image"),
        (Modality.MRI, np.zeros((3, 4, 4, 4), dtype=np.float32), IDENTITY, True, "brats_sequences needs"),
        (Modality.CT, np.zeros((4, 4, 4, 4), dtype=np.float32), IDENTITY, True, "brats_sequences needs"),
    ],
)
def test_requests_that_cannot_be_shown_to_the_model_are_refused(modality, volume, affine, brats, message):
    with pytest.raises(ValueError, match=message):
        ConsultationRequest("What is shown?", modality, ExpertInput(volume, affine), brats_sequences=brats)


def test_two_experts_of_one_name_are_refused():
    with pytest.raises(ValueError, match="two experts are named VISTA3D"):
        ConsultationAgent(ScriptedModel(), [_vista3d(), _vista3d()], template="llama_3")
