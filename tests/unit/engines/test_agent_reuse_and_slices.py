"""Ready-made expert results, the slice setting, the images the model is shown, and the transcript's JSON round trip."""

from __future__ import annotations

import json
from concurrent.futures import Future

import numpy as np
import pytest

from engines import images
from engines.agent import (
    AgentSettings,
    ConsultationAgent,
    ConsultationRequest,
    ExpertSource,
    Modality,
    Outcome,
    OutcomeReason,
    PendingExpertResult,
    SlicePolicy,
    Transcript,
)
from engines.experts.base import ExpertError, ExpertInput, ExpertName, ExpertResult
from tests.unit.engines.test_agent_doubles import (
    IDENTITY,
    FixedLabelExpert,
    FixedScoresExpert,
    ScriptedModel,
    brats_study,
    ct_study,
    cxr_image,
    failing_model_error,
)
from tests.unit.engines.test_prompts import CXR_SCORES_SORTED

NAMES = {1: "liver", 26: "hepatic tumor", 20: "lung"}
BRATS_NAMES = {1: "TC", 2: "ED", 4: "ET"}
FINAL = "A final answer from the scripted test double."


def _ready(expert: ExpertName, argument: str | None, labels: np.ndarray | None, **fields) -> ExpertResult:
    return ExpertResult(
        expert=expert,
        argument=argument,
        backend="torch-cuda",
        model_version="ready-made",
        demo=True,
        label_volume=labels,
        affine=IDENTITY,
        label_names=fields.pop("label_names", dict(NAMES) if expert is ExpertName.VISTA3D else dict(BRATS_NAMES)),
        timings=fields.pop("timings", {"preprocess": 2.0, "inference": 61.5, "postprocess": 3.5}),
        **fields,
    )


def _ct_request(*ready: ExpertResult, question: str = "Is there a hepatic tumor?") -> ConsultationRequest:
    volume, _ = ct_study()
    return ConsultationRequest(question, Modality.CT, ExpertInput(volume, IDENTITY), ready_results=ready)


def _agent(model, experts, **settings) -> ConsultationAgent:
    return ConsultationAgent(model, experts, template="vicuna_v1", settings=AgentSettings(**settings))


# -- ready-made results ------------------------------------------------------------------------------------------------


def test_a_ready_result_for_the_same_expert_and_argument_is_used_and_the_expert_does_not_run():
    _, labels = ct_study()
    expert = FixedLabelExpert(ExpertName.VISTA3D, labels, dict(NAMES))
    ready = _ready(ExpertName.VISTA3D, "hepatic tumor", labels)
    model = ScriptedModel("Let me trigger <VISTA3D(hepatic tumor)>.", FINAL)
    consultation = _agent(model, [expert]).consult(_ct_request(ready))
    call = consultation.transcript.expert_call
    assert consultation.transcript.outcome is Outcome.ANSWERED_WITH_EXPERT
    assert expert.calls == []
    assert call.source is ExpertSource.PROVIDED
    assert call.saved_s == 67.0  # the ready result's own preprocess + inference + postprocess, not spent here
    assert call.run_s is None
    assert call.result.model_version == "ready-made"
    assert consultation.expert_result is ready
    assert "expert" not in consultation.transcript.timings


def test_a_ready_result_for_another_argument_is_not_reused_and_the_expert_runs():
    _, labels = ct_study()
    expert = FixedLabelExpert(ExpertName.VISTA3D, labels, dict(NAMES))
    ready = _ready(ExpertName.VISTA3D, "everything", labels)
    model = ScriptedModel("Let me trigger <VISTA3D(hepatic tumor)>.", FINAL)
    transcript = _agent(model, [expert]).consult(_ct_request(ready)).transcript
    assert expert.calls == ["hepatic tumor"]
    assert transcript.expert_call.source is ExpertSource.RAN
    assert transcript.expert_call.saved_s is None
    assert transcript.expert_call.run_s is not None and "expert" in transcript.timings


def test_a_ready_vista3d_result_without_argument_serves_an_everything_trigger_with_no_expert_configured():
    _, labels = ct_study()
    ready = _ready(ExpertName.VISTA3D, None, labels)
    transcript = _agent(ScriptedModel("Let me trigger <VISTA3D()>.", FINAL), []).consult(_ct_request(ready)).transcript
    assert transcript.outcome is Outcome.ANSWERED_WITH_EXPERT
    assert transcript.expert_call.argument == "everything"
    assert transcript.expert_call.source is ExpertSource.PROVIDED


def test_ready_brats_and_cxr_results_match_whatever_the_tag_argument():
    volume, labels = brats_study()
    ready = _ready(ExpertName.BRATS, None, labels)
    request = ConsultationRequest(
        "Describe the lesion.", Modality.MRI, ExpertInput(volume, IDENTITY), brats_sequences=True, ready_results=[ready]
    )
    transcript = _agent(ScriptedModel("Let me trigger <BRATS(args)>.", FINAL), []).consult(request).transcript
    assert transcript.expert_call.source is ExpertSource.PROVIDED

    cxr_ready = ExpertResult(ExpertName.CXR, None, "torch-cpu", "v", True, scores=dict(CXR_SCORES_SORTED))
    request = ConsultationRequest(
        "Describe the image in detail.", Modality.CXR, ExpertInput(cxr_image()), ready_results=(cxr_ready,)
    )
    transcript = _agent(ScriptedModel("Let me first trigger <CXR()>.", FINAL), []).consult(request).transcript
    assert transcript.outcome is Outcome.ANSWERED_WITH_EXPERT
    assert transcript.expert_call.source is ExpertSource.PROVIDED
    assert transcript.expert_call.saved_s is None  # the ready result reported no timings: unknown


def test_a_ready_result_of_another_expert_does_not_answer_the_trigger():
    ready = ExpertResult(ExpertName.CXR, None, "torch-cpu", "v", True, scores=dict(CXR_SCORES_SORTED))
    transcript = _agent(ScriptedModel("<VISTA3D(organs)>", FINAL), []).consult(_ct_request(ready)).transcript
    assert transcript.reason is OutcomeReason.EXPERT_NOT_CONFIGURED


# -- the slice setting -------------------------------------------------------------------------------------------------


def test_middle_slice_policy_shows_the_middle_slice_in_both_turns():
    volume, labels = ct_study()
    expert = FixedLabelExpert(ExpertName.VISTA3D, labels, dict(NAMES))
    model = ScriptedModel("Let me trigger <VISTA3D()>.", FINAL)
    transcript = _agent(model, [expert]).consult(_ct_request()).transcript
    assert (transcript.slice.policy, transcript.slice.index, transcript.slice.count) == ("middle", 3, 6)
    shown = model.conversations[0][0].images[0]
    np.testing.assert_array_equal(shown, images.slice_image(volume, IDENTITY, "CT", 3).rgb)
    assert transcript.turns[0].images[0].slice_index == 3
    assert transcript.turns[1].images[0].slice_index == 3


def test_most_structure_policy_shows_the_slice_where_the_ready_result_found_most():
    volume, labels = ct_study()
    ready = _ready(ExpertName.VISTA3D, "everything", labels)  # lung (20) fills most of slice 5
    model = ScriptedModel("Let me trigger <VISTA3D()>.", FINAL)
    consultation = _agent(model, [], slice_policy=SlicePolicy.MOST_STRUCTURE).consult(_ct_request(ready))
    transcript = consultation.transcript
    assert transcript.slice.index == 5
    assert transcript.slice.reason == "most_structure: the slice with the most voxels of VISTA3D(everything)"
    shown = model.conversations[0][0].images[0]
    np.testing.assert_array_equal(shown, images.slice_image(volume, IDENTITY, "CT", 5).rgb)
    assert model.user_texts(1)[1].startswith("The results are <image>\n. The colors in this image describe red: lung. ")
    expected_overlay = images.render_overlay(volume, labels, IDENTITY, "CT", NAMES, 5).rgb
    np.testing.assert_array_equal(model.conversations[1][2].images[0], expected_overlay)


def test_most_structure_counts_only_the_structures_of_the_asked_group():
    volume, labels = ct_study()
    labels[:, :, 0] = 7  # a large aorta-only slice: not in the hepatic-tumor group
    ready = _ready(ExpertName.VISTA3D, "hepatic tumor", labels, label_names={**NAMES, 7: "aorta"})
    model = ScriptedModel("Let me trigger <VISTA3D(hepatic tumor)>.", FINAL)
    transcript = _agent(model, [], slice_policy="most_structure").consult(_ct_request(ready)).transcript
    assert transcript.slice.index == 1  # liver in slices 1-4 (16 voxels each, the tumour inside): first of the tie
    assert "VISTA3D(hepatic tumor)" in transcript.slice.reason


@pytest.mark.parametrize(
    ("ready", "reason"),
    [
        ((), "no ready-made segmentation of this study before turn 1"),
        ([_ready(ExpertName.VISTA3D, "everything", np.zeros((8, 8, 6), np.uint8))], "found none of its structures"),
    ],
)
def test_most_structure_falls_back_to_the_middle_slice_and_says_why(ready, reason):
    model = ScriptedModel("The image shows the upper abdomen.")
    transcript = _agent(model, [], slice_policy="most_structure").consult(_ct_request(*ready)).transcript
    assert transcript.slice.index == 3
    assert reason in transcript.slice.reason


def _brats_request(volume, labels) -> ConsultationRequest:
    ready = _ready(ExpertName.BRATS, None, labels)
    return ConsultationRequest(
        "Describe the lesion.", Modality.MRI, ExpertInput(volume, IDENTITY), brats_sequences=True, ready_results=[ready]
    )


def test_brats_shows_the_t1c_slice_four_times_as_trained_and_the_overlay_on_t1c():
    volume, labels = brats_study()
    model = ScriptedModel("Let me first trigger <BRATS()>.", FINAL)
    transcript = _agent(model, [], slice_policy="most_structure").consult(_brats_request(volume, labels)).transcript
    assert transcript.slice.index == 3
    assert [image.role for image in transcript.turns[0].images] == [
        "T1c", "T1c (as trained, in place of T1)", "T1c (as trained, in place of T2)", "T1c (as trained, in place of FLAIR)"
    ]
    t1c = images.slice_image(volume[0], IDENTITY, "MRI", 3).rgb
    for shown in model.conversations[0][0].images:
        np.testing.assert_array_equal(shown, t1c)
    assert transcript.settings["brats_images"] == "as_trained"
    expected_overlay = images.render_overlay(volume[0], labels, IDENTITY, "MRI", {1: "TC", 2: "ED", 4: "ET"}, 3)
    np.testing.assert_array_equal(model.conversations[1][2].images[0], expected_overlay.rgb)
    assert transcript.expert_call.overlay_legend == [["red", "TC"], ["blue", "ED"], ["yellow", "ET"]]


def test_brats_images_setting_sequences_shows_the_same_slice_of_the_four_sequences():
    volume, labels = brats_study()
    model = ScriptedModel("Let me first trigger <BRATS()>.", FINAL)
    expert = FixedLabelExpert(ExpertName.BRATS, labels)
    agent = _agent(model, [expert], slice_policy="most_structure", brats_images="sequences")
    transcript = agent.consult(_brats_request(volume, labels)).transcript
    assert transcript.slice.index == 3
    assert [image.role for image in transcript.turns[0].images] == ["T1c", "T1", "T2", "FLAIR"]
    for sequence, shown in zip(volume, model.conversations[0][0].images):
        np.testing.assert_array_equal(shown, images.slice_image(sequence, IDENTITY, "MRI", 3).rgb)
    expected_overlay = images.render_overlay(volume[0], labels, IDENTITY, "MRI", {1: "TC", 2: "ED", 4: "ET"}, 3)
    np.testing.assert_array_equal(model.conversations[1][2].images[0], expected_overlay.rgb)
    assert transcript.expert_call.overlay_legend == [["red", "TC"], ["blue", "ED"], ["yellow", "ET"]]


def test_a_radiograph_has_no_slice_record_and_is_shown_as_is():
    image = cxr_image()
    request = ConsultationRequest("Describe the image in detail.", Modality.CXR, ExpertInput(image))
    model = ScriptedModel("Let me first trigger <CXR()>.", FINAL)
    transcript = _agent(model, [FixedScoresExpert(CXR_SCORES_SORTED)]).consult(request).transcript
    assert transcript.slice is None
    np.testing.assert_array_equal(model.conversations[0][0].images[0], np.stack([image] * 3, axis=-1))
    assert model.conversations[1][2].images == ()


# -- the transcript as JSON --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answers",
    [
        ("Let me trigger <VISTA3D(hepatic tumor)>.", FINAL),
        ("Let me trigger <VISTA3D(liver)>.",),
        (failing_model_error(),),
        ("I segmented it using <VISTA3D(hepatic tumor)>.",),
    ],
)
def test_the_transcript_round_trips_through_json(answers):
    _, labels = ct_study()
    expert = FixedLabelExpert(ExpertName.VISTA3D, labels, dict(NAMES))
    ready = _ready(ExpertName.VISTA3D, "everything", labels, volumes_ml={"liver": 1.5})
    agent = _agent(ScriptedModel(*answers), [expert], slice_policy="most_structure")
    transcript = agent.consult(_ct_request(ready)).transcript
    text = transcript.to_json()
    assert json.loads(text)["outcome"] == transcript.outcome.value
    again = Transcript.from_json(text)
    assert again == transcript
    assert again.to_json() == text


def test_the_transcript_records_every_prompt_answer_timing_backend_and_model():
    _, labels = ct_study()
    expert = FixedLabelExpert(ExpertName.VISTA3D, labels, dict(NAMES))
    answer = "Let me trigger <VISTA3D(hepatic tumor)>."
    model = ScriptedModel(answer, FINAL, backend="openai:http://127.0.0.1:1", model="m3")
    data = json.loads(_agent(model, [expert]).consult(_ct_request()).transcript.to_json())
    assert data["backend"] == "openai:http://127.0.0.1:1" and data["model"] == "m3"
    assert [turn["answer"] for turn in data["turns"]] == [answer, FINAL]
    assert all(turn["templated_prompt"].startswith("A chat between") for turn in data["turns"])
    assert data["turns"][1]["backend_prompt"] == "<prompt of 3 messages>"
    assert {"prompt_build", "turn_1", "expert", "feedback", "turn_2", "total"} <= set(data["timings"])
    assert data["expert_call"]["result"]["label_names"] == {"1": "liver", "26": "hepatic tumor", "20": "lung"}
    assert data["trigger"] == {
        "kind": "expert",
        "tag": "VISTA3D(hepatic tumor)",
        "expert": "VISTA3D",
        "argument": "hepatic tumor",
        "raw_argument": "hepatic tumor",
        "says_segmented": False,
        "problem": None,
        "detail": "",
    }


# -- results still running beside turn 1 ----------------------------------------------------------------------------


def test_a_pending_result_that_finishes_during_turn_1_is_used_and_its_compute_time_is_saved():
    _, labels = ct_study()
    expert = FixedLabelExpert(ExpertName.VISTA3D, labels, dict(NAMES))
    future: Future = Future()
    pending = PendingExpertResult(ExpertName.VISTA3D, "hepatic tumor", future)
    model = ScriptedModel("Let me trigger <VISTA3D(hepatic tumor)>.", FINAL)
    model.during_generation.append(lambda: future.set_result(_ready(ExpertName.VISTA3D, "hepatic tumor", labels)))
    consultation = _agent(model, [expert]).consult(_ct_request(pending))
    call = consultation.transcript.expert_call
    assert consultation.transcript.outcome is Outcome.ANSWERED_WITH_EXPERT
    assert expert.calls == []
    assert call.source is ExpertSource.PROVIDED
    assert call.waited_s is not None and call.run_s is None
    assert call.saved_s == pytest.approx(67.0 - call.waited_s)
    assert consultation.expert_result is future.result()


def test_a_pending_result_that_never_arrives_times_out_without_running_the_expert():
    _, labels = ct_study()
    expert = FixedLabelExpert(ExpertName.VISTA3D, labels, dict(NAMES))
    pending = PendingExpertResult(ExpertName.VISTA3D, "hepatic tumor", Future())
    model = ScriptedModel("Let me trigger <VISTA3D(hepatic tumor)>.", FINAL)
    transcript = _agent(model, [expert], expert_timeout_s=0.05).consult(_ct_request(pending)).transcript
    assert transcript.reason is OutcomeReason.EXPERT_TIMED_OUT
    assert "the ready-made VISTA3D(hepatic tumor) result did not finish within 0.05 s" in transcript.detail
    assert expert.calls == []


@pytest.mark.parametrize(
    ("settle", "reason", "detail"),
    [
        (lambda f: f.set_exception(ExpertError("no weights")), OutcomeReason.EXPERT_FAILED, "failed: no weights"),
        (lambda f: f.cancel(), OutcomeReason.EXPERT_FAILED, "was cancelled"),
        (lambda f: f.set_exception(TimeoutError("inner")), OutcomeReason.EXPERT_CRASHED, "raised TimeoutError: inner"),
    ],
)
def test_a_pending_result_that_failed_is_recorded(settle, reason, detail):
    future: Future = Future()
    settle(future)
    pending = PendingExpertResult("VISTA3D", None, future)
    model = ScriptedModel("Let me trigger <VISTA3D()>.", FINAL)
    transcript = _agent(model, []).consult(_ct_request(pending)).transcript
    assert transcript.reason is reason
    assert detail in transcript.detail


def test_a_pending_result_for_another_argument_is_not_waited_for():
    _, labels = ct_study()
    expert = FixedLabelExpert(ExpertName.VISTA3D, labels, dict(NAMES))
    pending = PendingExpertResult(ExpertName.VISTA3D, "everything", Future())  # never finishes
    model = ScriptedModel("Let me trigger <VISTA3D(hepatic tumor)>.", FINAL)
    transcript = _agent(model, [expert], expert_timeout_s=5.0).consult(_ct_request(pending)).transcript
    assert transcript.outcome is Outcome.ANSWERED_WITH_EXPERT
    assert transcript.expert_call.source is ExpertSource.RAN
    assert expert.calls == ["hepatic tumor"]


def test_most_structure_waits_for_a_pending_segmentation_before_turn_1():
    _, labels = ct_study()
    future: Future = Future()
    future.set_result(_ready(ExpertName.VISTA3D, "everything", labels))
    pending = PendingExpertResult(ExpertName.VISTA3D, "everything", future)
    model = ScriptedModel("The image shows the lung bases.")
    transcript = _agent(model, [], slice_policy="most_structure").consult(_ct_request(pending)).transcript
    assert transcript.slice.index == 5


def test_most_structure_falls_back_when_the_pending_segmentation_does_not_arrive():
    pending = PendingExpertResult(ExpertName.VISTA3D, "everything", Future())
    model = ScriptedModel("The image shows the upper abdomen.")
    agent = _agent(model, [], slice_policy="most_structure", expert_timeout_s=0.05)
    transcript = agent.consult(_ct_request(pending)).transcript
    assert transcript.slice.index == 3
    assert "the ready-made VISTA3D(everything) result did not finish within 0.05 s" in transcript.slice.reason
    assert transcript.slice.reason.endswith("so the middle slice")


def test_ready_results_must_be_results_or_pending_results():
    with pytest.raises(TypeError, match="ready_results holds a dict"):
        _ct_request({"expert": "VISTA3D"})
    with pytest.raises(TypeError, match="future must be a concurrent.futures.Future"):
        PendingExpertResult(ExpertName.VISTA3D, None, object())
