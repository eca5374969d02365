"""Stage ``vlm``: VILA-M3 answers the route's questions, one consultation each, with the route's expert result handed in
ready-made. The model's own trigger decides, as trained, whether that result is fed back into its conversation; if it
asks for another expert or argument, the agent runs that one too (the transcript records both).

The route's expert runs BESIDE the model's first turn: the expert's message is sent after this stage's, and this
handler claims the expert stage itself (the ledger makes the claim exclusive) and runs it in a thread while turn 1 is
generated, handing the agent a pending result. If another worker took the expert first, the handler waits for its
result instead. Either way the expert stage is recorded as its own stage, and this stage ends only once it is done.
That thread is bounded by the expert stage's own time limits, and when this stage ends while it still runs, the
expert's claim is given back (``route_expert.py`` says how).

Saved: every transcript (``transcripts.json``) and the overlay image the model saw as ``overlay.png``; when the model
saw none (it answered without an expert), the route expert's labels are drawn on the slice it saw, so a viewer without
SEG support still has a picture of the findings. The stage's result is a ``contracts.Consultations``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from service.pipeline.contracts import Consultations, ExpertStageResult, PreparedInput, Route, VlmIdentity
from service.pipeline.executor import StageOutcome
from service.pipeline.ledger import StageClaim
from service.pipeline.stages import Stage, TransientStageError
from service.pipeline.time_limits import StageTimedOut
from service.pipeline.work.expert import ExpertStage
from service.pipeline.work.resources import StageResources, write_atomically, write_json
from service.pipeline.work.route_expert import RouteExpert

__all__ = ["VlmStage", "RegistryExpert"]

LOGGER = logging.getLogger(__name__)


class RegistryExpert:
    """An expert the agent may call, loaded from the worker's registry only if the model asks for it."""

    def __init__(self, resources: StageResources, name) -> None:
        self.resources = resources
        self.name = name

    def run(self, inputs, argument=None):
        return self.resources.experts.get(self.name).run(inputs, argument)


def _write_png(rgb: np.ndarray, path: Path) -> str:
    from PIL import Image

    with write_atomically(path) as handle:
        Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(handle, format="PNG")
    return str(path)


def _model_seconds(transcript) -> float:
    """What the consultation itself took (images for the model, generations, feedback; an expert it ran)."""
    return float(transcript.timings.get("total", sum(turn.generation_s for turn in transcript.turns)))


class VlmStage:
    def __init__(self, resources: StageResources, *, exit_process: Callable[[int], object] = os._exit) -> None:
        """``exit_process`` ends the worker when the route's expert passes the expert stage's hard limit (tests pass
        a recorder)."""
        self.resources = resources
        self._exit_process = exit_process
        self._expert_limits = resources.time_limits

    def _agent(self, loaded):
        from engines.agent import AgentSettings, ConsultationAgent
        from engines.experts import ExpertName

        settings = self.resources.settings
        agent_settings = AgentSettings(
            slice_policy=settings.agent_slice_policy,
            max_new_tokens=settings.vlm_max_new_tokens,
            min_new_tokens=min(settings.vlm_min_new_tokens, settings.vlm_max_new_tokens),
            max_total_new_tokens=2 * settings.vlm_max_new_tokens,
            expert_timeout_s=settings.expert_timeout_seconds,
            generation_timeout_s=settings.vlm_timeout_seconds,
            placeholder_form=settings.vlm_placeholder_form,
            brats_images=settings.agent_brats_images,
        )
        experts = [RegistryExpert(self.resources, name) for name in ExpertName]
        return ConsultationAgent(loaded.model, experts, template=loaded.template, settings=agent_settings)

    def __call__(self, claim: StageClaim) -> StageOutcome:
        loaded = self.resources.vlm
        inputs = PreparedInput.of(claim).expert_input()
        started = time.perf_counter()
        offered, beside = self._route_expert(claim)
        ended = "done"
        try:
            return self._consult(claim, loaded, inputs, offered, beside, started)
        except BaseException as exc:
            ended = f"{exc.__class__.__name__}: {exc}"
            raise
        finally:
            if beside is not None:  # the route's expert must not stay claimed by a stage that has ended
                beside.stop(f"given back: the vlm stage that ran it beside the model's first turn ended ({ended})")

    def _consult(self, claim: StageClaim, loaded, inputs, offered, beside: RouteExpert | None,
                 started: float) -> StageOutcome:
        from engines.agent import ConsultationRequest, Modality, Outcome

        route = Route.of(claim)
        agent = self._agent(loaded)
        consultations = []
        consulting_since = time.time()
        for question in route.questions or ["Describe the image in detail."]:
            request = ConsultationRequest(question, Modality(route.modality), inputs,
                                          brats_sequences=route.brats_sequences, ready_results=(offered,))
            consultations.append(agent.consult(request))
        consulted_s = time.perf_counter() - started
        consulted_window = [consulting_since, time.time()]
        ready = self._await_route_expert(offered, beside)
        first = consultations[0].transcript
        if first.outcome is Outcome.MODEL_FAILED:
            raise TransientStageError(f"VILA-M3 failed: {first.detail}")
        folder = self.resources.work_dir(claim.study_uid, claim.run_id)
        transcripts = [c.transcript.to_dict() for c in consultations]
        overlay_png, overlay_source = self._overlay(consultations, route, inputs, ready, folder)
        model_s = sum(_model_seconds(c.transcript) for c in consultations)
        LOGGER.info("study %s: %d consultation(s), first ended %s, model %.2f s", claim.study_uid, len(consultations),
                    first.outcome.value, model_s)
        return StageOutcome(result=Consultations(
            transcripts=write_json(folder / "transcripts.json", transcripts),
            questions=[c.transcript.question for c in consultations],
            answers=[c.transcript.final_answer for c in consultations],
            outcomes=[c.transcript.outcome.value for c in consultations],
            overlay_png=overlay_png,
            overlay_source=overlay_source,
            overlay_slice=first.slice.index if first.slice else None,
            model=VlmIdentity(name=loaded.name, version=loaded.version, backend=first.backend or "unavailable",
                              weights_digest=loaded.weights_digest, demo=loaded.demo),
            model_s=round(model_s, 4),
            expert_beside_turn1=beside is not None,
            stage_wall_s=round(time.perf_counter() - started, 4),
            consultations_wall_s=round(consulted_s, 4),
            model_window=consulted_window,  # wall clock of the consultations (they include waits for the expert)
        ))

    # -- the route's expert, beside turn 1 ---------------------------------------------------------------------------

    def _route_expert(self, claim: StageClaim):
        """The route's expert result for the agent: ready-made when its stage is done, else pending (run here, or
        awaited from the worker that took it). Returns (what the agent is offered, the RouteExpert or None)."""
        from engines.agent import PendingExpertResult

        if claim.results.get(Stage.EXPERT.value) is not None:
            return ExpertStageResult.of(claim).expert_result(), None
        beside = RouteExpert(self.resources, ExpertStage(self.resources), claim, self._expert_limits,
                             exit_process=self._exit_process)
        beside.start()
        route = Route.of(claim)
        return PendingExpertResult(route.expert.value, route.argument, beside.future), beside

    def _await_route_expert(self, offered, beside: RouteExpert | None):
        """The report needs the route's expert whatever the model said: wait for it before this stage ends."""
        if beside is None:
            return offered
        try:
            return beside.future.result(timeout=self.resources.settings.expert_timeout_seconds)
        except concurrent.futures.TimeoutError as exc:
            raise TransientStageError("the route's expert did not finish in EXPERT_TIMEOUT_SECONDS") from exc
        except StageTimedOut as exc:
            if exc.stage is not Stage.EXPERT:  # this stage's own soft limit, interrupting the wait
                raise
            raise TransientStageError(f"the route's expert {exc}") from exc

    def _overlay(self, consultations, route: Route, inputs, ready, folder: Path) -> tuple[str | None, str]:
        for consultation in consultations:
            if consultation.overlay is not None:
                return _write_png(consultation.overlay, folder / "overlay.png"), "shown to the model"
        if route.expert.value == "CXR" or ready.label_volume is None:
            return None, ""
        from engines.agent import ImageForm, ProtocolImageRenderer

        form = ImageForm.BRATS if route.brats_sequences else ImageForm.CT
        transcript = consultations[0].transcript
        index = transcript.slice.index if transcript.slice else None
        try:
            drawn = ProtocolImageRenderer().overlay(form, inputs, ready.label_volume, ready.label_names, index)
        except ValueError as exc:
            LOGGER.warning("no overlay image: %s", exc)
            return None, ""
        return _write_png(drawn.image, folder / "overlay.png"), "drawn on the slice the model saw"
