"""The route's expert run beside the VLM stage, on a real database: the real VLM and expert stage handlers with a
TEST-DOUBLE model and a TEST-DOUBLE expert that hangs; its claim is given back when the VLM stage ends, it is bounded by
the expert stage's own limits (the soft one stops the wait, the hard one ends the worker), and it waits out a back-off.
"""

import threading
from datetime import timezone

import numpy as np
import pytest

from engines.experts.base import ExpertName, ExpertResult
from service.config import Settings
from service.db.models import StageRun, StageStatus
from service.db.session import session_scope
from service.pipeline.executor import StageExecutor
from service.pipeline.ledger import PipelineLedger
from service.pipeline.stages import Stage
from service.pipeline.time_limits import HARD_LIMIT_EXIT_CODE, StageTimeLimiter, StageTimeLimits
from service.pipeline.work.expert import ExpertStage
from service.pipeline.work.resources import StageResources, save_arrays
from service.pipeline.work.vlm import VlmStage
from service.pipeline.work.vlm_loader import LoadedVlm
from tests.support.polling import wait_for
from tests.unit.engines.test_agent_doubles import ScriptedModel, cxr_image
from tests.unit.service.pipeline.test_ledger_and_executor import RecordingDispatcher, add_study, handlers

HANG_S = 20.0  # a hung expert or model call "hangs" this long at most: the limits under test act much sooner
ROUTE = {"rule": "chest", "expert": "CXR", "argument": None, "modality": "CXR", "questions": ["Is there a pleural effusion?"]}
ANSWER = "No pleural effusion is seen."


class HangingExperts:
    """TEST DOUBLE of the expert registry (the real CXR expert needs the TorchXRayVision weights): its first run hangs
    (a GPU call that never returns) until the test releases it; run ``n`` scores Effusion ``n / 10``."""

    def __init__(self, hang_first: bool = True) -> None:
        self.hang_first = hang_first
        self.started = threading.Event()
        self.release = threading.Event()
        self.returned: list[int] = []
        self._runs = 0

    def get(self, name):
        assert ExpertName(name) is ExpertName.CXR
        return self

    def run(self, inputs, argument=None) -> ExpertResult:
        self._runs += 1
        number = self._runs
        if number == 1 and self.hang_first:
            self.started.set()
            self.release.wait(HANG_S)
        self.returned.append(number)
        return ExpertResult(expert=ExpertName.CXR, argument=None, backend="test-double", model_version="hanging",
                            demo=True, scores={"Effusion": number / 10}, timings={"inference": 1.0})


def route_expert_threads():
    return [t for t in threading.enumerate() if t.name == "m3edge-route-expert"]


def stage_row(session_factory, run_id, stage):
    with session_scope(session_factory) as session:
        row = session.query(StageRun).filter_by(run_id=run_id, stage=stage.value).one()
        return row.status, row.attempts, dict(row.result or {}), row.error


class Pipeline:
    """A run whose plan and prepare stages are done, and an executor with the real VLM and expert stage handlers."""

    def __init__(self, session_factory, tmp_path, limits: dict, model: ScriptedModel, experts: HangingExperts,
                 limit_the_vlm_stage: bool = False) -> None:
        settings = Settings(home=tmp_path / "home", stage_time_limits=limits, expert_timeout_seconds=HANG_S)
        self.exits: list = []
        self.exited = threading.Event()
        resources = StageResources(
            settings, session_factory,
            vlm_factory=lambda: LoadedVlm(model, "vicuna_v1", "stand-in", "1", "none", demo=True),
            experts_factory=lambda: experts)
        table = handlers([], {Stage.VLM: VlmStage(resources, exit_process=self._exit_process),
                              Stage.EXPERT: ExpertStage(resources)})
        self.ledger = ledger = PipelineLedger(session_factory, max_attempts=3,
                                              time_limits=StageTimeLimits.from_settings(settings))
        limiter = StageTimeLimiter(ledger.time_limits) if limit_the_vlm_stage else None
        self.executor = StageExecutor(ledger, table, RecordingDispatcher(ledger), worker_name="gpu0",
                                      backoff=lambda attempt: 0.0, time_limiter=limiter)
        add_study(session_factory)
        self.run_id = run_id = ledger.start_run("1.2.3")
        image = save_arrays(tmp_path / "input.npz", volume=cxr_image(), affine=np.eye(4))
        prepared = {"expert": "CXR", "input": image, "source_series": "1.2.3.4", "source_instances": ["cxr.dcm"],
                    "shape": list(cxr_image().shape)}
        for stage, result, route in ((Stage.PLAN, ROUTE, ROUTE), (Stage.PREPARE, prepared, None)):
            assert ledger.claim(run_id, stage, "cpu0") is not None
            ledger.finish(run_id, stage, result, route=route)

    def _exit_process(self, code):  # what os._exit would do, recorded: the test process goes on
        self.exits.append((code, self.ledger.stage_state(self.run_id, Stage.EXPERT)))
        self.exited.set()


@pytest.fixture
def experts():
    experts = HangingExperts()
    yield experts
    experts.release.set()
    wait_for(lambda: not route_expert_threads(), timeout=HANG_S, message="the route's expert thread lingered")


def test_a_vlm_stage_that_times_out_gives_its_hung_expert_back_and_its_late_result_is_dropped(session_factory,
                                                                                                tmp_path, experts):
    model = ScriptedModel(ANSWER, ANSWER)
    model.during_generation.append(lambda: experts.started.wait(HANG_S))  # turn 1 ends once the expert has started
    pipeline = Pipeline(session_factory, tmp_path, {"vlm": {"soft": 1, "hard": HANG_S}}, model, experts,
                        limit_the_vlm_stage=True)
    run_id, executor = pipeline.run_id, pipeline.executor
    # Turn 1 is answered; the stage then waits for its expert, which hangs, and its soft limit interrupts the wait.
    assert executor.execute(run_id, Stage.VLM) == "retrying"
    vlm_error = "timed out: ran past the vlm stage's soft time limit of 1 s"
    assert stage_row(session_factory, run_id, Stage.VLM)[3] == vlm_error
    assert experts.started.is_set() and experts.returned == []  # still hung
    status, attempts, result, error = stage_row(session_factory, run_id, Stage.EXPERT)
    assert (status, attempts, result) == (StageStatus.PENDING, 1, {})  # given back, not left claimed
    assert error == ("given back: the vlm stage that ran it beside the model's first turn ended (StageTimedOut: timed "
                     "out: ran past the vlm stage's soft time limit of 1 s)")
    # The expert's own message (here, or on another worker) runs it normally.
    assert executor.execute(run_id, Stage.EXPERT) == "done"
    experts.release.set()  # the hung run returns at last: what it brings is not recorded
    wait_for(lambda: experts.returned == [2, 1] and not route_expert_threads(), timeout=HANG_S,
             message="the hung expert never returned")
    status, attempts, result, error = stage_row(session_factory, run_id, Stage.EXPERT)
    assert (status, attempts, result["scores"], error) == (StageStatus.DONE, 2, {"Effusion": 0.2}, "")
    # The VLM stage's retry takes the expert's result ready-made.
    assert executor.execute(run_id, Stage.VLM) == "done"
    status, attempts, result, _ = stage_row(session_factory, run_id, Stage.VLM)
    assert (status, attempts, result["expert_beside_turn1"], result["answers"]) == (StageStatus.DONE, 2, False,
                                                                                   [ANSWER])
    assert pipeline.exits == []


def test_a_route_expert_past_its_soft_limit_stops_the_wait_and_past_its_hard_limit_ends_the_worker(session_factory,
                                                                                                 tmp_path, experts):
    model = ScriptedModel(ANSWER)
    pipeline = Pipeline(session_factory, tmp_path, {"expert": {"soft": 0.2, "hard": 0.5}}, model, experts)
    model.during_generation.append(lambda: pipeline.exited.wait(HANG_S))  # turn 1 outlasts the expert's limits
    run_id = pipeline.run_id
    assert pipeline.executor.execute(run_id, Stage.VLM) == "retrying"
    # At the hard limit the worker was ended, as for a stage of its own, after noting it on the expert's row.
    assert pipeline.exits == [(HARD_LIMIT_EXIT_CODE, (
        StageStatus.RUNNING, {},
        "timed out: ran past the expert stage's hard time limit of 0.5 s; its worker process was ended (exit status "
        "75) (worker gpu0, beside the vlm stage)"))]
    # The soft limit had already ended the wait for it: the VLM stage's attempt is a transient failure.
    vlm_error = "the route's expert timed out: ran past the expert stage's soft time limit of 0.2 s"
    assert stage_row(session_factory, run_id, Stage.VLM)[::3] == (StageStatus.QUEUED, vlm_error)
    status, attempts, result, error = stage_row(session_factory, run_id, Stage.EXPERT)
    assert (status, attempts, result) == (StageStatus.PENDING, 1, {})
    assert error == ("given back: the vlm stage that ran it beside the model's first turn ended (TransientStageError: "
                     f"{vlm_error})")
    experts.release.set()
    wait_for(lambda: experts.returned == [1] and not route_expert_threads(), timeout=HANG_S,
             message="the hung expert never returned")
    assert stage_row(session_factory, run_id, Stage.EXPERT)[:3] == (StageStatus.PENDING, 1, {})  # its late end dropped


def test_a_route_expert_waiting_for_its_retry_is_run_beside_the_model_once_its_backoff_has_passed(session_factory,
                                                                                                  tmp_path):
    experts = HangingExperts(hang_first=False)
    pipeline = Pipeline(session_factory, tmp_path, {}, ScriptedModel(ANSWER), experts)
    run_id, ledger = pipeline.run_id, pipeline.ledger
    failed = ledger.claim(run_id, Stage.EXPERT, "gpu1")  # another worker's attempt failed: 0.5 s of back-off
    ledger.retry_later(run_id, Stage.EXPERT, "CUDA out of memory", 0.5, attempt=failed.attempt)
    assert pipeline.executor.execute(run_id, Stage.VLM) == "done"
    with session_scope(session_factory) as session:
        row = session.query(StageRun).filter_by(run_id=run_id, stage="expert").one()
        status, attempts, worker, started_at, retry_at = (row.status, row.attempts, row.worker, row.started_at,
                                                          row.retry_at)
    assert (status, attempts, worker, experts.returned) == (StageStatus.DONE, 2, "gpu0", [1])

    def utc(moment):
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)

    assert utc(started_at) >= utc(retry_at)  # claimed once its back-off had passed, not before
    assert stage_row(session_factory, run_id, Stage.VLM)[2]["expert_beside_turn1"] is True
    assert not pipeline.exits
