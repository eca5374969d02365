"""The expert-consultation loop of VILA-M3 (VILA_M3_PROTOCOL.md sections 3-6).

Turn 1: model cards + image placeholder(s) + the modality sentence + the question; every user turn holding an image
reaches the model in the form the settings choose (``placeholder_form``: as trained, the default, or raw). The first
answer is parsed once for a trigger; at most one expert result is obtained (a ready-made one when it matches, else the
expert runs under a timeout); the overlay is drawn on the slice the model saw (or, when that slice shows none of the
result, where the result is); turn 2 feeds the result back in the training sentence and its answer is final (never
parsed again). Whatever the model or the expert does, :meth:`ConsultationAgent.consult` ends in a recorded
:class:`~engines.agent.transcript.Outcome`; it raises only for a request that cannot be shown to the model at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engines.agent import prompts
from engines.agent.feedback import FeedbackTurn, build_feedback_turn
from engines.agent.expert_call import (
    ExpertCrash,
    ExpertTimeout,
    await_result,
    find_ready_result,
    run_expert,
    summarise_result,
)
from engines.agent.rendering import ImageForm, ProtocolImageRenderer, StudyImageRenderer
from engines.agent.request import AgentSettings, Consultation, ConsultationRequest
from engines.agent.slices import choose_slice
from engines.agent.transcript import (
    ExpertCallRecord,
    ExpertSource,
    ImageRecord,
    Outcome,
    OutcomeReason,
    SliceRecord,
    Transcript,
    TriggerRecord,
    TurnRecord,
)
from engines.agent.triggers import Trigger, TriggerError, TriggerKind, parse_trigger
from engines.experts.base import Expert, ExpertError, ExpertName, ExpertResult
from engines.vlm.base import Conversation, Generation, GenerationConfig, Role, VisionLanguageModel, VlmError
from engines.vlm.templates import render_prompt

__all__ = ["ConsultationAgent", "PromptRenderer"]

logger = logging.getLogger(__name__)

PromptRenderer = Callable[[Conversation], str]


@dataclass
class _End:
    outcome: Outcome
    reason: OutcomeReason | None
    detail: str
    final_answer: str = ""


@dataclass
class _Run:
    """What one consultation has gathered so far."""

    request: ConsultationRequest
    turns: list[TurnRecord] = field(default_factory=list)
    trigger: TriggerRecord | None = None
    expert_call: ExpertCallRecord | None = None
    slice: SliceRecord | None = None
    timings: dict[str, float] = field(default_factory=dict)
    backend: str = ""
    model: str = ""
    tokens_generated: int = 0
    model_error: str = ""
    expert_result: ExpertResult | None = None
    overlay: Any = None


class ConsultationAgent:
    """Asks VILA-M3 one question about one study, consulting at most one expert.

    ``experts`` are the experts that may run on the request path (by their ``name``); ``template`` is the conversation
    template of the checkpoint (``llama_3`` for the 8B, ``vicuna_v1`` for 3B/13B), a setting, never guessed.
    ``prompt_renderer`` turns a conversation into the full templated prompt for the transcript (default:
    ``engines.vlm.templates.render_prompt``; None records none).
    """

    def __init__(
        self,
        model: VisionLanguageModel,
        experts: Iterable[Expert],
        *,
        template: str,
        settings: AgentSettings | None = None,
        renderer: StudyImageRenderer | None = None,
        prompt_renderer: PromptRenderer | None = render_prompt,
        model_cards: str | None = None,
        label_groups: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not isinstance(template, str) or not template:
            raise ValueError("template must name the checkpoint's conversation template, e.g. 'llama_3' or 'vicuna_v1'")
        self._model = model
        self._experts = self._check_experts(experts)
        self._template = template
        self._settings = settings or AgentSettings()
        self._renderer = renderer or ProtocolImageRenderer(self._settings.brats_images)
        self._prompt_renderer = prompt_renderer
        if prompt_renderer is not None:
            prompt_renderer(Conversation(template).add(Role.USER, "?"))  # an unknown template fails here, not mid-study
        self._model_cards = prompts.load_model_cards() if model_cards is None else model_cards
        self._label_groups = dict(prompts.load_label_groups() if label_groups is None else label_groups)
        self._clock = clock

    @staticmethod
    def _check_experts(experts: Iterable[Expert]) -> dict[ExpertName, Expert]:
        by_name: dict[ExpertName, Expert] = {}
        for expert in experts:
            name = ExpertName(expert.name)
            if name in by_name:
                raise ValueError(f"two experts are named {name.value}: give the agent one expert per name")
            by_name[name] = expert
        return by_name

    def consult(self, request: ConsultationRequest) -> Consultation:
        started = self._clock()
        run = _Run(request)
        end = self._converse(run)
        run.timings["total"] = self._clock() - started
        logger.info(
            "consultation ended: outcome=%s reason=%s expert=%s turns=%d",
            end.outcome.value,
            end.reason.value if end.reason else "-",
            run.expert_call.expert if run.expert_call else "-",
            len(run.turns),
        )
        transcript = Transcript(
            question=request.question,
            modality=request.modality.value,
            brats_sequences=request.brats_sequences,
            template=self._template,
            backend=run.backend,
            model=run.model,
            outcome=end.outcome,
            reason=end.reason,
            detail=end.detail,
            final_answer=end.final_answer,
            turns=run.turns,
            trigger=run.trigger,
            expert_call=run.expert_call,
            slice=run.slice,
            timings=run.timings,
            settings=self._settings.as_record(),
        )
        return Consultation(transcript=transcript, expert_result=run.expert_result, overlay=run.overlay)

    # -- the two turns ---------------------------------------------------------------------------------------------

    def _converse(self, run: _Run) -> _End:
        request = run.request
        begun = self._clock()
        policy = self._settings.slice_policy
        slice_index, slice_reason = choose_slice(
            request, policy, self._renderer, self._label_groups, self._settings.expert_timeout_s
        )
        first = self._renderer.first_turn_images(request.form, request.expert_input, slice_index)
        if first.slice_index is not None:
            run.slice = SliceRecord(policy.value, first.slice_index, first.slice_count, slice_reason)
        if request.form is ImageForm.BRATS:
            text = prompts.brats_first_turn_text(request.question, self._model_cards)
        else:
            text = prompts.first_turn_text(request.question, request.modality, self._model_cards)
        text = prompts.text_as_sent(text, self._settings.placeholder_form)
        conversation = Conversation(self._template).add(Role.USER, text, first.images)
        records = [
            ImageRecord(role, list(image.shape), first.slice_index) for role, image in zip(first.roles, first.images)
        ]
        run.timings["prompt_build"] = self._clock() - begun

        answer = self._generate(run, conversation, text, records, self._settings.max_new_tokens)
        if answer is None:
            run.trigger = TriggerRecord(kind="unparsed", detail="turn 1 produced no answer")
            return _End(Outcome.MODEL_FAILED, OutcomeReason.TURN_1_MODEL_ERROR, run.model_error)
        if answer.stopped_by == "max_new_tokens":
            run.trigger = TriggerRecord(kind="unparsed", detail="turn 1 hit max_new_tokens: not parsed")
            return _End(
                Outcome.ANSWER_TRUNCATED,
                OutcomeReason.TURN_1_TRUNCATED,
                f"turn 1 hit max_new_tokens ({self._settings.max_new_tokens}) without a stop token",
                answer.text,
            )
        trigger = self._parse(run, answer.text)
        if trigger is None or trigger.kind is not TriggerKind.EXPERT:
            return self._without_expert(run, trigger, answer.text)

        second_pass = not trigger.says_segmented
        turn_2_tokens = min(self._settings.max_new_tokens, self._settings.max_total_new_tokens - run.tokens_generated)
        if second_pass and self._settings.max_turns < 2:
            return _End(
                Outcome.ANSWERED_WITHOUT_EXPERT,
                OutcomeReason.TURN_LIMIT,
                f"the model asked for <{trigger.tag}> but max_turns is 1: no second pass",
                answer.text,
            )
        if second_pass and turn_2_tokens < max(1, self._settings.min_new_tokens):
            return _End(
                Outcome.ANSWERED_WITHOUT_EXPERT,
                OutcomeReason.TOKEN_LIMIT,
                f"turn 1 used {run.tokens_generated} of max_total_new_tokens {self._settings.max_total_new_tokens}: "
                "too few left for a second pass",
                answer.text,
            )

        result = self._expert_result(run, trigger)
        if isinstance(result, _End):
            result.final_answer = answer.text
            return result
        feedback = self._feedback(run, trigger, result)
        if isinstance(feedback, _End):
            feedback.final_answer = answer.text
            return feedback
        feedback_records = [ImageRecord("overlay", list(image.shape), feedback.overlay_slice) for image in feedback.images]
        if not second_pass:
            return _End(
                Outcome.SEGMENTED_NO_SECOND_PASS,
                None,
                f"the trigger answer says 'segmented': the {trigger.expert.value} overlay is the result, "
                "no second pass",
                answer.text,
            )

        feedback_text = prompts.text_as_sent(feedback.text, self._settings.placeholder_form)
        conversation.add(Role.ASSISTANT, answer.text).add(Role.USER, feedback_text, feedback.images)
        final = self._generate(run, conversation, feedback_text, feedback_records, turn_2_tokens)
        if final is None:
            return _End(Outcome.MODEL_FAILED, OutcomeReason.TURN_2_MODEL_ERROR, run.model_error)
        if final.stopped_by == "max_new_tokens":
            return _End(
                Outcome.ANSWER_TRUNCATED,
                OutcomeReason.TURN_2_TRUNCATED,
                f"turn 2 hit its token bound ({turn_2_tokens}) without a stop token",
                final.text,
            )
        return _End(
            Outcome.ANSWERED_WITH_EXPERT,
            None,
            f"answered with {trigger.expert.value}"
            + (f"({trigger.argument})" if trigger.argument else "")
            + f" ({run.expert_call.source.value} result)",
            final.text,
        )

    def _generate(
        self, run: _Run, conversation: Conversation, user_text: str, images: list[ImageRecord], max_new_tokens: int
    ) -> Generation | None:
        number = len(run.turns) + 1
        templated = self._prompt_renderer(conversation) if self._prompt_renderer is not None else None
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            min_new_tokens=min(self._settings.min_new_tokens, max_new_tokens),
            temperature=0.0,
            timeout_s=self._settings.generation_timeout_s,
        )
        begun = self._clock()
        try:
            generation = self._model.generate(conversation, config)
        except (VlmError, RuntimeError, TimeoutError, OSError) as error:  # server down, CUDA out of memory, ...
            if getattr(error, "interrupts_work", False):  # the caller's own time limit: not the model's failure
                raise
            elapsed = run.timings[f"turn_{number}"] = self._clock() - begun
            run.model_error = f"turn {number}: the model failed: {type(error).__name__}: {error}"
            failed = Generation("", "", 0, 0, "error", 0.0, elapsed, run.backend, run.model)
            run.turns.append(self._turn_record(number, user_text, images, templated, failed, max_new_tokens))
            return None
        run.timings[f"turn_{number}"] = self._clock() - begun
        run.tokens_generated += generation.completion_tokens
        if number == 1:
            run.backend, run.model = generation.backend, generation.model
        run.turns.append(self._turn_record(number, user_text, images, templated, generation, max_new_tokens))
        return generation

    @staticmethod
    def _turn_record(
        number: int,
        user_text: str,
        images: list[ImageRecord],
        templated: str | None,
        generation: Generation,
        max_new_tokens: int,
    ) -> TurnRecord:
        return TurnRecord(
            number=number,
            user_text=user_text,
            images=images,
            templated_prompt=templated,
            backend_prompt=generation.prompt,
            answer=generation.text,
            stopped_by=generation.stopped_by,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            max_new_tokens=max_new_tokens,
            time_to_first_token_s=generation.time_to_first_token_s,
            generation_s=generation.total_s,
        )

    # -- trigger, expert, feedback ---------------------------------------------------------------------------------

    def _parse(self, run: _Run, answer: str) -> Trigger | None:
        try:
            trigger = parse_trigger(answer, self._label_groups)
        except TriggerError as error:
            run.trigger = TriggerRecord(
                kind="invalid", tag=" | ".join(error.tags), problem=error.problem.value, detail=str(error)
            )
            return None
        run.trigger = TriggerRecord(
            kind=trigger.kind.value,
            tag=trigger.tag,
            expert=trigger.expert.value if trigger.expert else None,
            argument=trigger.argument,
            raw_argument=trigger.raw_argument,
            says_segmented=trigger.says_segmented,
        )
        return trigger

    @staticmethod
    def _without_expert(run: _Run, trigger: Trigger | None, answer: str) -> _End:
        if trigger is None:
            return _End(
                Outcome.ANSWERED_WITHOUT_EXPERT, OutcomeReason(run.trigger.problem), run.trigger.detail, answer
            )
        if trigger.kind is TriggerKind.UNSERVED:
            return _End(
                Outcome.ANSWERED_WITHOUT_EXPERT,
                OutcomeReason.UNSERVED_EXPERT,
                f"the model asked for <{trigger.tag}>, which has no expert here: its answer is passed through",
                answer,
            )
        return _End(
            Outcome.ANSWERED_WITHOUT_EXPERT, OutcomeReason.NO_TRIGGER, "the model answered without an expert", answer
        )

    def _expert_result(self, run: _Run, trigger: Trigger) -> ExpertResult | _End:
        expert_name, argument = trigger.expert, trigger.argument
        call = ExpertCallRecord(expert=expert_name.value, argument=argument, source=None)
        run.expert_call = call
        provided = find_ready_result(run.request.ready_results, expert_name, argument)
        if isinstance(provided, ExpertResult):  # finished before it was needed: nothing spent on the request path
            call.source, call.waited_s = ExpertSource.PROVIDED, 0.0
            call.saved_s = float(sum(provided.timings.values())) if provided.timings else None
            call.result = summarise_result(provided)
            run.expert_result = provided
            return provided
        expert = self._experts.get(expert_name)
        if provided is None and expert is None:
            call.error = f"no {expert_name.value} expert is configured and no ready-made result matches"
            return _End(Outcome.ANSWERED_WITHOUT_EXPERT, OutcomeReason.EXPERT_NOT_CONFIGURED, call.error)
        call.timeout_s = timeout_s = self._settings.expert_timeout_s
        begun = self._clock()
        try:
            if provided is not None:
                asked = expert_name.value + (f"({argument})" if argument else "")
                result = await_result(provided.future, f"the ready-made {asked} result", timeout_s)
            else:
                result = run_expert(expert, run.request.expert_input, argument, timeout_s)
        except ExpertTimeout as error:
            reason, call.error = OutcomeReason.EXPERT_TIMED_OUT, str(error)
        except (ExpertError, ValueError) as error:
            reason, call.error = OutcomeReason.EXPERT_FAILED, f"{expert_name.value} failed: {error}"
        except ExpertCrash as error:
            reason, call.error = OutcomeReason.EXPERT_CRASHED, str(error)
        else:
            spent = run.timings["expert"] = self._clock() - begun
            if provided is not None:  # it ran beside turn 1: only the wait is on the request path
                call.source, call.waited_s = ExpertSource.PROVIDED, spent
                compute_s = sum(result.timings.values()) if result.timings else None
                call.saved_s = max(0.0, compute_s - spent) if compute_s is not None else None
            else:
                call.source, call.run_s = ExpertSource.RAN, spent
            call.result = summarise_result(result)
            run.expert_result = result
            return result
        run.timings["expert"] = self._clock() - begun
        return _End(Outcome.ANSWERED_WITHOUT_EXPERT, reason, call.error)

    def _feedback(self, run: _Run, trigger: Trigger, result: ExpertResult) -> FeedbackTurn | _End:
        begun = self._clock()
        slice_index = run.slice.index if run.slice else None
        try:
            turn = build_feedback_turn(
                trigger.expert, result, run.request, self._renderer, slice_index, self._label_groups
            )
        except (ValueError, TypeError, IndexError, KeyError) as error:
            run.expert_call.error = f"the {trigger.expert.value} result cannot be shown to the model: {error}"
            return _End(Outcome.ANSWERED_WITHOUT_EXPERT, OutcomeReason.EXPERT_RESULT_UNUSABLE, run.expert_call.error)
        finally:
            run.timings["feedback"] = self._clock() - begun
        if turn.legend is not None:
            run.expert_call.overlay_legend = [[color, name] for color, name in turn.legend]
            run.expert_call.overlay_slice, run.expert_call.overlay_note = turn.overlay_slice, turn.note
            run.overlay = turn.images[0]
        return turn
