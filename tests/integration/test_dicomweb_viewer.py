"""What the OHIF Viewer asks of m3edge's DICOMweb, over real HTTP: metadata kept per instance (C-STORE by dcmtk's
storescu) and served from the catalogue, BulkDataURIs that resolve, frames as stored (native, single-bit SEG frames,
RLE), and QIDO-RS ``includefield``."""

from __future__ import annotations

import httpx
import numpy as np
import pydicom
from pydicom.uid import RLELossless
from sqlalchemy import select

from dicom_node.dicomweb import instance_metadata, unpack_metadata
from service.db.models import AuditEvent, Instance
from service.dicomweb.multipart import media_type_parameters, parse_parts
from tests.integration.test_dicomweb import _client, _produce_results, _value, service  # noqa: F401 (fixture)
from tests.support.source_study import ct_study


def _get(service, path: str, accept: str | None = None) -> httpx.Response:  # noqa: F811
    headers = {"Authorization": f"Bearer {service['token']}"}
    if accept is not None:
        headers["Accept"] = accept
    return httpx.get(f"{service['base']}/dicomweb{path}", headers=headers)


def _parts(answer: httpx.Response) -> list:
    media_type, parameters = media_type_parameters(answer.headers["content-type"])
    assert media_type == "multipart/related", answer.text[:200]
    return parse_parts(answer.content, parameters["boundary"])


def test_metadata_is_kept_and_served_without_reading_the_files(service, session_factory):  # noqa: F811
    ct = service["ct"]
    study_uid = ct.study_instance_uid
    with session_factory() as session:
        kept = dict(session.execute(select(Instance.sop_instance_uid, Instance.dicom_json)).all())
        paths = dict(session.execute(select(Instance.sop_instance_uid, Instance.path)).all())
    assert set(kept) == {ds.SOPInstanceUID for ds in ct.all_instances} and None not in kept.values()
    first = ct.all_instances[0]
    spooled = service["settings"].spool_dir / paths[first.SOPInstanceUID]
    assert unpack_metadata(kept[first.SOPInstanceUID]) == instance_metadata(spooled)

    for path in paths.values():  # the files are gone: the metadata does not need them
        (service["settings"].spool_dir / path).write_bytes(b"")
    answer = _get(service, f"/studies/{study_uid}/metadata")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/dicom+json"
    documents = answer.json()
    assert len(documents) == len(ct.all_instances)
    mine = next(d for d in documents if _value(d, "00080018") == first.SOPInstanceUID)
    assert _value(mine, "00100010")["Alphabetic"] == str(first.PatientName)
    assert _value(mine, "00280010") == first.Rows
    assert mine["00200032"]["Value"] == [float(v) for v in first.ImagePositionPatient]
    assert mine["7FE00010"]["BulkDataURI"] == (
        f"{service['base']}/dicomweb/studies/{study_uid}/series/{first.SeriesInstanceUID}/instances/"
        f"{first.SOPInstanceUID}/bulkdata/7FE00010")
    assert "InlineBinary" not in mine["7FE00010"]


def test_frames_and_bulk_data_are_sent_as_stored(service, session_factory):  # noqa: F811
    ct = service["ct"]
    study_uid = ct.study_instance_uid
    first = ct.all_instances[0]
    instance = f"/studies/{study_uid}/series/{first.SeriesInstanceUID}/instances/{first.SOPInstanceUID}"
    ohif = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'

    (frame,) = _parts(_get(service, instance + "/frames/1", ohif))
    assert bytes(frame.content) == first.PixelData
    assert frame.content_type == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    metadata = _get(service, instance + "/metadata").json()[0]
    bulk = httpx.get(metadata["7FE00010"]["BulkDataURI"], headers={"Authorization": f"Bearer {service['token']}"})
    assert [bytes(p.content) for p in _parts(bulk)] == [first.PixelData]
    assert _get(service, instance + "/frames/2", ohif).status_code == 404  # a CT slice has one frame
    assert _get(service, instance + "/frames/0", ohif).status_code in (400, 422)
    refused = _get(service, instance + "/frames/1",
                   'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50')
    assert refused.status_code == 406 and "never transcoded" in refused.json()["detail"]

    produced = _produce_results(service["settings"], session_factory)  # the SEG m3edge wrote: 1-bit frames
    seg = produced["seg"]
    seg_path = f"/studies/{study_uid}/series/{seg.SeriesInstanceUID}/instances/{seg.SOPInstanceUID}"
    masks = pydicom.dcmread(produced["objects"]["seg"]["path"]).pixel_array
    parts = _parts(_get(service, seg_path + "/frames/2,3", ohif))
    for part, mask in zip(parts, masks[1:3], strict=True):
        unpacked = np.unpackbits(np.frombuffer(part.content, np.uint8), bitorder="little")[:mask.size]
        assert np.array_equal(unpacked.reshape(mask.shape), mask)

    rle = ct_study(slices=2)  # a compressed instance arrives by STOW-RS; its frame goes out compressed, unchanged
    dataset = rle.all_instances[0]
    dataset.compress(RLELossless)
    _client(service).store_instances([dataset])
    rle_path = (f"/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}/instances/"
                f"{dataset.SOPInstanceUID}/frames/1")
    (compressed,) = _parts(_get(service, rle_path, ohif))
    assert compressed.content_type == f"application/octet-stream; transfer-syntax={RLELossless}"
    assert bytes(compressed.content) == next(pydicom.encaps.generate_frames(dataset.PixelData, number_of_frames=1))
    (as_image,) = _parts(_get(service, rle_path, 'multipart/related; type="image/x-dicom-rle"'))
    assert as_image.content_type.startswith("image/x-dicom-rle")
    with session_factory() as session:
        actions = list(session.scalars(select(AuditEvent.action).where(AuditEvent.actor == "rex")))
    assert actions.count("dicomweb.frames.read") >= 4 and "dicomweb.bulkdata.read" in actions


def test_qido_includefield_adds_attributes_from_the_kept_metadata(service):  # noqa: F811
    ct = service["ct"]
    first = ct.all_instances[0]
    (study,) = _get(service, f"/studies?StudyInstanceUID={ct.study_instance_uid}"
                             "&includefield=00100010,ReferringPhysicianName,AccessionNumber").json()
    assert _value(study, "00100010")["Alphabetic"] == str(first.PatientName)
    assert _value(study, "00080050") == first.AccessionNumber
    assert "00080090" in study  # present (empty or not) because it was asked for and the instance has it
    (plain,) = _get(service, f"/studies?StudyInstanceUID={ct.study_instance_uid}").json()
    assert "00100010" in plain  # the patient context is a study answer's default attribute
    assert "00080090" not in plain  # not asked, not a default: not sent

    (series,) = _get(service, f"/studies/{ct.study_instance_uid}/series?includefield=all").json()
    assert _value(series, "00100020") == first.PatientID and _value(series, "00080060") == "CT"
    instances = _get(service, f"/studies/{ct.study_instance_uid}/instances?includefield=00280010,00200013").json()
    assert sorted(_value(i, "00200013") for i in instances) == sorted(ds.InstanceNumber for ds in ct.all_instances)
    assert {_value(i, "00280010") for i in instances} == {first.Rows}
    bad = _get(service, "/studies?includefield=NotAKeyword")
    assert bad.status_code == 400 and "includefield" in bad.json()["detail"]

