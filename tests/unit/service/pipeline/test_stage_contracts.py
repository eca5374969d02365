"""Stage contracts: every stage's result validated when made and when read, versioned; results recorded by the
release before these contracts (untyped dicts, no schema_version) are still read; a result this release cannot read
fails the run with a reason a person can act on, naming fields, never their values."""

import pytest
from pydantic import ValidationError

from service.config import Settings
from service.db.models import StageRun, StageStatus
from service.db.session import session_scope
from service.pipeline.contracts import (
    CONTRACTS,
    Consultations,
    ContractError,
    DeliveryResult,
    ExpertStageResult,
    PreparedInput,
    ReportResult,
    Route,
    stage_result_for_storage,
)
from service.pipeline.executor import StageExecutor
from service.pipeline.ledger import PipelineLedger
from service.pipeline.stages import Stage
from service.pipeline.work.report import ReportStage
from service.pipeline.work.resources import StageResources
from tests.unit.service.pipeline.test_ledger_and_executor import RecordingDispatcher, add_study, handlers, study_state

# What the release before the contracts recorded, key for key (service/pipeline/work/*.py at that release).
OLDER_RELEASE = {
    Stage.PLAN: {"rule": "ct-abdomen", "expert": "VISTA3D", "argument": "everything", "questions": ["Describe."],
                 "destinations": ["PACS@10.0.0.5:104"], "priority": "routine", "matched_series": {},
                 "eligible_series": ["1.2.3.4"], "modality": "CT", "brats_sequences": False},
    Stage.PREPARE: {"expert": "BRATS", "input": "/var/work/input.npz", "source_series": "1.2.3.4.1",
                    "source_instances": ["/spool/a.dcm", "/spool/b.dcm"], "other_evidence": ["/spool/c.dcm"],
                    "sequences": {"T1c": "1.2.3.4.1", "T1": "1.2.3.4.2", "T2": "1.2.3.4.3", "FLAIR": "1.2.3.4.4"},
                    "shape": [4, 40, 40, 30]},
    Stage.EXPERT: {"expert": "BRATS", "argument": None, "backend": "torch-cpu", "model_version": "0.5.4",
                   "demo": True, "weights_digest": "sha256:" + "ab" * 32, "label_names": {"4": "enhancing tumor"},
                   "volumes_ml": {"TC": 1.5, "WT": 2.0, "ET": 1.0}, "scores": {}, "timings": {"inference": 0.2},
                   "fallback_reason": "", "labels": "/var/work/labels.npz", "elapsed_s": 0.3},
    Stage.VLM: {"transcripts": "/var/work/transcripts.json", "questions": ["Describe."], "answers": ["A lesion."],
                "outcomes": ["answered_with_expert"], "overlay_png": None, "overlay_source": "", "overlay_slice": 12,
                "model": {"name": "VILA-M3", "version": "demo", "backend": "torch-cpu",
                          "weights_digest": "sha256:" + "cd" * 32, "demo": True}, "model_s": 1.2},
    Stage.REPORT: {"objects": [{"path": "/var/results/sr.dcm", "sop_instance_uid": "2.25.1",
                                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.22"}], "demo": True},
    Stage.DELIVER: {"destinations": ["PACS@10.0.0.5:104"], "delivered": 1},
}


@pytest.mark.parametrize("stage", list(Stage), ids=lambda stage: stage.value)
def test_a_result_recorded_by_the_release_before_the_contracts_is_read_and_written_back_as_the_current_version(stage):
    contract = CONTRACTS[stage]
    read = contract.read(OLDER_RELEASE[stage])
    assert isinstance(read, contract) and read.schema_version == contract.SCHEMA_VERSION
    recorded = stage_result_for_storage(stage, read)
    assert recorded["schema_version"] == contract.SCHEMA_VERSION
    assert {k: v for k, v in recorded.items() if k in OLDER_RELEASE[stage]} == OLDER_RELEASE[stage]
    assert contract.read(recorded) == read


def test_an_older_result_keeps_its_values_and_gets_defaults_for_what_that_release_did_not_record():
    expert = ExpertStageResult.read(OLDER_RELEASE[Stage.EXPERT])
    assert (expert.elapsed_s, expert.model_window, expert.volumes_ml["TC"]) == (0.3, None, 1.5)
    vlm = Consultations.read({**OLDER_RELEASE[Stage.VLM], "a_key_no_release_reads": 1})  # dropped, not refused
    assert (vlm.expert_beside_turn1, vlm.stage_wall_s, vlm.model.demo) == (False, None, True)
    route = Route.read({k: v for k, v in OLDER_RELEASE[Stage.PLAN].items() if k != "eligible_series"})
    assert route.eligible_series is None  # planned before routes named them: prepare reads every series


@pytest.mark.parametrize("stage", list(Stage), ids=lambda stage: stage.value)
def test_a_result_recorded_by_a_newer_release_is_refused_saying_what_to_do(stage):
    with pytest.raises(ContractError, match=rf"the {stage.value} stage's result was recorded by a newer release of "
                                            rf"m3edge \(schema version 7; this release reads up to 1\).*reprocess the "
                                            rf"study from {stage.value}"):
        CONTRACTS[stage].read({**OLDER_RELEASE[stage], "schema_version": 7})


def test_an_unreadable_result_names_its_fields_never_their_values():
    broken = {**OLDER_RELEASE[Stage.PREPARE], "source_instances": "Doe^Jane", "shape": "big"}
    del broken["source_series"]
    with pytest.raises(ContractError) as raised:
        PreparedInput.read(broken)
    message = str(raised.value)
    assert message.startswith("the prepare stage's recorded result (schema version 0) cannot be read as a "
                              "PreparedInput: ")
    assert "source_series: Field required" in message and "source_instances:" in message and "shape:" in message
    assert "Doe^Jane" not in message and "big" not in message
    assert message.endswith("reprocess the study from prepare")
    with pytest.raises(ContractError, match="the expert stage left no result in this run"):
        ExpertStageResult.read(None)


def test_a_contract_cannot_be_made_invalid():
    with pytest.raises(ValidationError, match="one answer and one outcome per question"):
        Consultations.model_validate({**OLDER_RELEASE[Stage.VLM], "answers": ["a", "b"]})
    with pytest.raises(ValidationError, match="expert"):
        PreparedInput(**{**OLDER_RELEASE[Stage.PREPARE], "expert": "SAM"})
    with pytest.raises(ValidationError, match="delivered"):
        DeliveryResult(destinations=[], delivered=-1)
    with pytest.raises(ValidationError, match="objects"):
        ReportResult(objects=[], demo=False)
    with pytest.raises(ValidationError, match="schema_version must be 1"):
        Route(**{**OLDER_RELEASE[Stage.PLAN], "schema_version": 2})


def test_a_stage_that_returns_another_stages_contract_is_refused():
    delivery = DeliveryResult(destinations=[], delivered=0)
    with pytest.raises(ContractError, match="the report stage returned a DeliveryResult, not a ReportResult"):
        stage_result_for_storage(Stage.REPORT, delivery)


def test_a_run_whose_earlier_result_this_release_cannot_read_fails_with_the_reason(session_factory, tmp_path):
    settings = Settings(home=tmp_path)
    ledger = PipelineLedger(session_factory)
    table = handlers([], {Stage.REPORT: ReportStage(StageResources(settings, session_factory))})
    executor = StageExecutor(ledger, table, RecordingDispatcher(ledger))
    add_study(session_factory)
    run_id = ledger.start_run("1.2.3")
    newer = {**OLDER_RELEASE[Stage.PREPARE], "schema_version": 2}
    for stage, result in ((Stage.PLAN, OLDER_RELEASE[Stage.PLAN]), (Stage.PREPARE, newer),
                          (Stage.EXPERT, OLDER_RELEASE[Stage.EXPERT]), (Stage.VLM, OLDER_RELEASE[Stage.VLM])):
        assert ledger.claim(run_id, stage, "cpu0") is not None
        ledger.finish(run_id, stage, result, route=OLDER_RELEASE[Stage.PLAN] if stage is Stage.PLAN else None)
    assert executor.execute(run_id, Stage.REPORT) == "failed"
    reason = ("the prepare stage's result was recorded by a newer release of m3edge (schema version 2; this release "
              "reads up to 1): finish the run with that release, or reprocess the study from prepare")
    with session_scope(session_factory) as session:
        row = session.query(StageRun).filter_by(run_id=run_id, stage=Stage.REPORT.value).one()
        assert (row.status, row.error) == (StageStatus.FAILED, reason)
    status, error = study_state(session_factory)
    assert status.value == "failed" and reason in error and "Traceback" not in error
