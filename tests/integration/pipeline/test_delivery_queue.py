"""Delivery rows against a real Orthanc and a destination that is down: the one up gets everything, the one down
does not block it, and a later pass delivers only what is missing."""

from pydicom import dcmread

from dicom_node.network import DicomAddress
from dicom_node.scu import RetryPolicy, StorageSCU
from service.db.models import Delivery, PipelineRun, Study
from service.db.session import session_scope
from service.pipeline.delivery import DeliveryQueue, ResultObject
from tests.conftest import require_tool
from tests.support.dicom_corpus import write_ct_series
from tests.support.orthanc import OrthancServer
from tests.support.ports import free_port


def test_a_destination_that_is_down_does_not_block_the_others(tmp_path, session_factory):
    require_tool("Orthanc")
    files = write_ct_series(tmp_path / "ct", 3, rows=32, columns=32).paths
    objects = [ResultObject(dcmread(p, stop_before_pixels=True).SOPInstanceUID, p) for p in files]
    with session_scope(session_factory) as session:
        study = Study(study_uid="1.2.3")
        session.add(study)
        session.flush()
        run = PipelineRun(study_id=study.id, run_number=1, trigger="complete")
        session.add(run)
        session.flush()
        run_id = run.id
    down_port = free_port()
    with OrthancServer(tmp_path / "up") as up:
        destinations = [DicomAddress(up.ae_title, "127.0.0.1", up.dicom_port), DicomAddress("DOWN", "127.0.0.1", down_port)]
        queue = DeliveryQueue(session_factory, StorageSCU("M3EDGE", retry=RetryPolicy(attempts=1), connection_timeout=2))
        with session_scope(session_factory) as session:
            assert DeliveryQueue.add(session, run_id, destinations, objects) == 6
        with session_scope(session_factory) as session:
            assert DeliveryQueue.add(session, run_id, destinations, objects) == 0  # idempotent

        first = queue.send_pending(run_id)
        assert first.delivered == 3 and list(first.failed) == [f"DOWN@127.0.0.1:{down_port}"]
        assert sorted(up.lookup_instance(o.sop_instance_uid) is not None for o in objects) == [True] * 3
        assert queue.pending_runs() == [run_id]

        with OrthancServer(tmp_path / "late", ae_title="DOWN", dicom_port=down_port) as late:
            second = queue.send_pending(run_id)
            assert second.delivered == 3 and second.complete
            assert all(late.lookup_instance(o.sop_instance_uid) for o in objects)
        assert len(up.instance_ids()) == 3  # nothing sent twice to the destination that was up
    with session_scope(session_factory) as session:
        rows = session.query(Delivery).all()
        assert {r.status for r in rows} == {"delivered"}
        assert sorted(r.attempts for r in rows) == [1, 1, 1, 2, 2, 2]
    assert queue.pending_runs() == []
