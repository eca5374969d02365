"""Stage ``vlm``: VILA-M3 answers the route's questions, one consultation each, with the route's expert result handed in
ready-made. The model's own trigger decides, as trained, whether that result is fed back into its conversation; if it
asks for another expert or argument, the agent runs that one too (the transcript records both).

The route's expert runs BESIDE the model's first turn: the expert's message is sent after this stage's, and this
handler claims the expert stage itself (the ledger makes the claim exclusive) and runs it in a thread while turn 1 is
generated, handing the agent a pending result. If another worker took the expert first, the handler waits for its
result instead. Either way the expert stage is recorded as its own stage, and this stage ends only once it is done.

Saved: every transcript (``transcripts.json``) and the overlay image the model saw as ``overlay.png``; when the model
saw none (it answered without an expert), the route expert's labels are drawn on the slice it saw, so a viewer without
SEG support still has a picture of the findings.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from pathlib import Path

import numpy as np

from service.pipeline.executor import StageOutcome
from service.pipeline.ledger import PipelineLedger, StageClaim
from service.pipeline.stages import PermanentStageError, Stage, TransientStageError
from service.pipeline.work.expert import ExpertStage
from service.pipeline.work.expert_record import expert_result_from_record
from service.pipeline.work.resources import StageResources, load_arrays, write_atomically, write_json

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

    with write_atomically(path, ".png") as handle:
        Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(handle, format="PNG")
    return str(path)


def _model_seconds(transcript) -> float:
    """What the consultation itself took (images for the model, generations, feedback; an expert it ran)."""
    return float(transcript.timings.get("total", sum(turn.generation_s for turn in transcript.turns)))


class VlmStage:
    def __init__(self, resources: StageResources) -> None:
        self.resources = resources

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
        )
        experts = [RegistryExpert(self.resources, name) for name in ExpertName]
        return ConsultationAgent(loaded.model, experts, template=loaded.template, settings=agent_settings)

    def __call__(self, claim: StageClaim) -> StageOutcome:
        from engines.agent import ConsultationRequest, Modality, Outcome
        from engines.experts import ExpertInput

        route = claim.route
        loaded = self.resources.vlm
        arrays = load_arrays(claim.results["prepare"]["input"])
        inputs = ExpertInput(arrays["volume"], arrays.get("affine"))
        started = time.perf_counter()
        offered, beside = self._route_expert(claim)
        agent = self._agent(loaded)
        consultations = []
        for question in route.get("questions") or ["Describe the image in detail."]:
            request = ConsultationRequest(question, Modality(route["modality"]), inputs,
                                          brats_sequences=bool(route.get("brats_sequences")), ready_results=(offered,))
            consultations.append(agent.consult(request))
        consulted_s = time.perf_counter() - started
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
        return StageOutcome(result={
            "transcripts": write_json(folder / "transcripts.json", transcripts),
            "questions": [c.transcript.question for c in consultations],
            "answers": [c.transcript.final_answer for c in consultations],
            "outcomes": [c.transcript.outcome.value for c in consultations],
            "overlay_png": overlay_png,
            "overlay_source": overlay_source,
            "overlay_slice": first.slice.index if first.slice else None,
            "model": {"name": loaded.name, "version": loaded.version, "backend": first.backend or "unavailable",
                      "weights_digest": loaded.weights_digest, "demo": loaded.demo},
            "model_s": round(model_s, 4),
            "expert_beside_turn1": beside is not None,
            "stage_wall_s": round(time.perf_counter() - started, 4),
            "consultations_wall_s": round(consulted_s, 4),
        })

    # -- the route's expert, beside turn 1 ---------------------------------------------------------------------------

    def _route_expert(self, claim: StageClaim):
        """The route's expert result for the agent: ready-made when its stage is done, else pending (started here,
        or awaited from the worker that took it). Returns (what the agent is offered, the future or None)."""
        from engines.agent import PendingExpertResult

        record = claim.results.get("expert")
        if record is not None:
            return expert_result_from_record(record), None
        ledger = PipelineLedger(self.resources.session_factory)
        future: concurrent.futures.Future = concurrent.futures.Future()
        expert_claim = ledger.claim(claim.run_id, Stage.EXPERT, claim.worker)
        if expert_claim is not None:
            target, args = self._run_expert, (ledger, expert_claim, future)
            LOGGER.info("study %s: expert %s starts beside the model's first turn", claim.study_uid,
                        claim.route["expert"])
        else:
            target, args = self._wait_for_expert, (ledger, claim.run_id, future)
        threading.Thread(target=target, args=args, name="m3edge-route-expert", daemon=True).start()
        pending = PendingExpertResult(claim.route["expert"], claim.route.get("argument"), future)
        return pending, future

    def _run_expert(self, ledger: PipelineLedger, expert_claim: StageClaim, future) -> None:
        try:
            outcome = ExpertStage(self.resources)(expert_claim)
        except TransientStageError as exc:
            ledger.retry_later(expert_claim.run_id, Stage.EXPERT, str(exc))  # its own message retries it
            future.set_exception(exc)
        except PermanentStageError as exc:
            ledger.fail(expert_claim.run_id, Stage.EXPERT, str(exc))
            future.set_exception(exc)
        except BaseException as exc:  # the expert stage fails visibly, as the executor would record it
            ledger.fail(expert_claim.run_id, Stage.EXPERT, f"{exc.__class__.__name__}: {exc}")
            future.set_exception(PermanentStageError(f"{exc.__class__.__name__}: {exc}"))
        else:
            ledger.finish(expert_claim.run_id, Stage.EXPERT, outcome.result)
            future.set_result(expert_result_from_record(outcome.result))

    def _wait_for_expert(self, ledger: PipelineLedger, run_id: int, future) -> None:
        from service.db.models import StageStatus

        deadline = time.monotonic() + self.resources.settings.expert_timeout_seconds
        while True:
            status, result, error = ledger.stage_state(run_id, Stage.EXPERT)
            if status == StageStatus.DONE:
                future.set_result(expert_result_from_record(result))
                return
            if status == StageStatus.FAILED:
                future.set_exception(PermanentStageError(f"the route's expert failed: {error}"))
                return
            if time.monotonic() > deadline:
                future.set_exception(TransientStageError("the route's expert is still running on another worker"))
                return
            time.sleep(0.2)

    def _await_route_expert(self, offered, beside):
        """The report needs the route's expert whatever the model said: wait for it before this stage ends."""
        if beside is None:
            return offered
        try:
            return beside.result(timeout=self.resources.settings.expert_timeout_seconds)
        except concurrent.futures.TimeoutError as exc:
            raise TransientStageError("the route's expert did not finish in EXPERT_TIMEOUT_SECONDS") from exc

    def _overlay(self, consultations, route, inputs, ready, folder: Path) -> tuple[str | None, str]:
        for consultation in consultations:
            if consultation.overlay is not None:
                return _write_png(consultation.overlay, folder / "overlay.png"), "shown to the model"
        if route["expert"] == "CXR" or ready.label_volume is None:
            return None, ""
        from engines.agent import ImageForm, ProtocolImageRenderer

        form = ImageForm.BRATS if route.get("brats_sequences") else ImageForm.CT
        transcript = consultations[0].transcript
        index = transcript.slice.index if transcript.slice else None
        try:
            drawn = ProtocolImageRenderer().overlay(form, inputs, ready.label_volume, ready.label_names, index)
        except ValueError as exc:
            LOGGER.warning("no overlay image: %s", exc)
            return None, ""
        return _write_png(drawn.image, folder / "overlay.png"), "drawn on the slice the model saw"
