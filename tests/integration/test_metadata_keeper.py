"""The metadata keeper: each received instance's DICOM JSON is kept in its row once its study is quiet, by the
process that runs the node (never a receiving process), and WADO-RS reads the file until then."""

from __future__ import annotations

from datetime import timedelta, timezone

from sqlalchemy import select

from dicom_node.dicomweb import instance_metadata, unpack_metadata, with_bulk_data_base
from service.composition import build_service
from service.db.models import Instance, Study
from service.dicomweb.metadata_documents import MetadataDocuments
from service.dicomweb.metadata_keeper import UNREADABLE, MetadataKeeper
from service.dicomweb.wado import stored_files
from tests.support.dcmtk import storescu
from tests.support.polling import wait_for
from tests.support.scp_node import node_settings, running_node
from tests.support.source_study import ct_study, write_datasets


def _kept(session_factory) -> dict[str, bytes | None]:
    with session_factory() as session:
        return dict(session.execute(select(Instance.sop_instance_uid, Instance.dicom_json)).all())


def test_the_running_service_keeps_every_instances_metadata_after_the_transfer(tmp_path, database_url,
                                                                                 session_factory):
    settings = node_settings(tmp_path / "home", database_url=database_url, study_idle_seconds=3600)
    ct = ct_study()
    files = write_datasets(tmp_path / "ct", ct.all_instances)
    service, node = build_service(settings, session_factory, pipeline=False, worker=False, assemble=False, api=False)
    service.start()
    try:
        sent = storescu(node.port, files)
        assert sent.returncode == 0, sent.output
        kept = wait_for(lambda: (k := _kept(session_factory)) and None not in k.values() and k,
                        timeout=30, message="the keeper did not keep every instance's metadata")
    finally:
        service.stop()
    assert set(kept) == {ds.SOPInstanceUID for ds in ct.all_instances}
    with session_factory() as session:
        paths = dict(session.execute(select(Instance.sop_instance_uid, Instance.path)).all())
    for uid, document in kept.items():
        assert unpack_metadata(document) == instance_metadata(settings.spool_dir / paths[uid])


def test_a_study_still_receiving_waits_and_an_unreadable_header_is_tried_once(tmp_path, database_url,
                                                                              session_factory):
    settings = node_settings(tmp_path / "home", database_url=database_url, study_idle_seconds=3600)
    ct = ct_study()
    with running_node(tmp_path / "home", session_factory, database_url=database_url) as node:
        sent = storescu(node.port, write_datasets(tmp_path / "ct", ct.all_instances))
        assert sent.returncode == 0, sent.output
        node.wait_until_recorded()
    with session_factory() as session:
        last = session.scalar(select(Study.last_received_at).where(Study.study_uid == ct.study_instance_uid))
        broken_uid, broken_path = session.execute(select(Instance.sop_instance_uid, Instance.path)
                                                  .order_by(Instance.id)).first()
    last = last if last.tzinfo else last.replace(tzinfo=timezone.utc)
    now = [last + timedelta(seconds=1)]
    keeper = MetadataKeeper(session_factory, settings.spool_dir, quiet_seconds=2, batch=2, clock=lambda: now[0])

    assert keeper.keep_pending() == 0  # received 1 s ago: the transfer may go on
    assert set(_kept(session_factory).values()) == {None}
    with session_factory() as session:  # before it is kept, WADO-RS renders the file itself
        (first,) = [f for f in stored_files(session, settings.spool_dir, ct.study_instance_uid, with_metadata=True)
                    if f.sop_instance_uid == broken_uid]
    assert first.dicom_json is None
    series_url = f"http://x/studies/{first.study_uid}/series/{first.series_uid}"
    assert MetadataDocuments().body([first], "http://x") == (
        b"[" + with_bulk_data_base(instance_metadata(first.path), series_url) + b"]")

    (settings.spool_dir / broken_path).write_bytes(b"not DICOM at all")
    now[0] = last + timedelta(seconds=3)
    assert keeper.keep_pending() == len(ct.all_instances)  # in batches of 2, every one of them
    kept = _kept(session_factory)
    assert kept.pop(broken_uid) == UNREADABLE and None not in kept.values() and UNREADABLE not in kept.values()
    assert keeper.keep_pending(quiet_seconds=0) == 0  # an unreadable header is not tried again and again
    with session_factory() as session:
        (broken,) = [f for f in stored_files(session, settings.spool_dir, ct.study_instance_uid, with_metadata=True)
                     if f.sop_instance_uid == broken_uid]
    assert broken.dicom_json == UNREADABLE
    assert ct.study_instance_uid.encode() in MetadataDocuments().body([broken], "http://x")  # its UIDs, from the row
