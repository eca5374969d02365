"""Our Storage SCU sending into a real Orthanc (started by the test on free ports): what Orthanc holds afterwards is
checked through its REST API, pixel data and UIDs included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO

from dicom_node.network import DicomAddress
from dicom_node.scu import AssociationRejected, DestinationUnreachable, RetryPolicy, StorageSCU
from tests.conftest import require_tool
from tests.support.dicom_corpus import write_ct_series
from tests.support.orthanc import OrthancServer
from tests.support.ports import free_port


def _ct_files(tmp_path, count: int):
    """A small generated CT series (64x64 pixels) of ``count`` files."""
    return write_ct_series(tmp_path / "ct", count, rows=64, columns=64).paths


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Iterator[OrthancServer]:
    require_tool("Orthanc")
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def _address(server: OrthancServer) -> DicomAddress:
    return DicomAddress(server.ae_title, "127.0.0.1", server.dicom_port)


def _assert_orthanc_holds(server: OrthancServer, files) -> None:
    for path in files:
        sent = dcmread(path)
        instance_id = server.lookup_instance(sent.SOPInstanceUID)
        assert instance_id is not None, f"Orthanc has no instance {sent.SOPInstanceUID}"
        held = dcmread(DicomBytesIO(server.instance_file(instance_id)))
        assert (held.StudyInstanceUID, held.SeriesInstanceUID, held.SOPClassUID) == (
            sent.StudyInstanceUID, sent.SeriesInstanceUID, sent.SOPClassUID)
        assert held.PixelData == sent.PixelData


def test_a_series_sent_to_orthanc_arrives_with_its_pixel_data(tmp_path, orthanc):
    files = _ct_files(tmp_path, 5)
    report = StorageSCU("M3EDGE").send(_address(orthanc), files)
    assert report.all_delivered and report.associations == 1
    assert [o.status for o in report.outcomes] == [0x0000] * 5
    assert {o.sop_instance_uid for o in report.outcomes} == {str(dcmread(p).SOPInstanceUID) for p in files}
    _assert_orthanc_holds(orthanc, files)


def test_echo_to_orthanc_succeeds_and_a_wrong_called_ae_title_is_rejected(orthanc):
    scu = StorageSCU("M3EDGE")
    assert scu.echo(_address(orthanc)) >= 0
    with pytest.raises(AssociationRejected, match="check the destination's AE title .*'NOT_ORTHANC'"):
        scu.echo(DicomAddress("NOT_ORTHANC", "127.0.0.1", orthanc.dicom_port))


def test_an_orthanc_that_does_not_know_our_ae_title_rejects_us_clearly(tmp_path):
    require_tool("Orthanc")
    files = _ct_files(tmp_path, 1)
    with OrthancServer(tmp_path / "strict", allow_unknown_callers=False) as strict:
        scu = StorageSCU("M3EDGE", retry=RetryPolicy(attempts=3, first_delay=0.1))
        with pytest.raises(AssociationRejected, match="add 'M3EDGE' .* to the destination's known AEs") as raised:
            scu.send(_address(strict), files)
        assert raised.value.permanent
        assert strict.instance_ids() == []


@pytest.mark.slow
def test_orthanc_down_at_first_then_started_gets_the_study(tmp_path):
    require_tool("Orthanc")
    files = _ct_files(tmp_path, 3)
    late = OrthancServer(tmp_path / "late", dicom_port=free_port())
    waits: list[float] = []

    def start_orthanc_during_the_first_wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 1:
            late.start()

    scu = StorageSCU(
        "M3EDGE", retry=RetryPolicy(attempts=3, first_delay=0.5), sleep=start_orthanc_during_the_first_wait
    )
    try:
        with pytest.raises(DestinationUnreachable):
            StorageSCU("M3EDGE", retry=RetryPolicy(attempts=1)).echo(_address(late))
        report = scu.send(_address(late), files)
        assert report.all_delivered
        assert waits == [0.5]
        _assert_orthanc_holds(late, files)
    finally:
        late.stop()


def _m3edge(*args: str, home) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "M3EDGE_HOME": str(home), "M3EDGE_DICOM_AE_TITLE": "M3EDGE"}
    return subprocess.run([sys.executable, "-c", "from service.cli.main import main; main()", *args],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
def test_the_echo_and_send_commands_talk_to_orthanc(tmp_path, orthanc):
    address = str(_address(orthanc))
    echoed = _m3edge("echo", address, f"NOBODY@127.0.0.1:{free_port()}", home=tmp_path)
    assert echoed.returncode == 1, echoed.stderr
    assert f"{address}: ok" in echoed.stdout and "NOBODY" in echoed.stdout and "FAILED: cannot connect" in echoed.stdout
    files = _ct_files(tmp_path, 2)
    sent = _m3edge("send", address, str(tmp_path / "ct"), "--json", home=tmp_path)
    assert sent.returncode == 0, sent.stderr
    lines = [json.loads(line) for line in sent.stdout.splitlines()]
    assert [(line["delivered"], line["status"]) for line in lines] == [(True, "0x0000")] * 2
    assert {line["sop_instance_uid"] for line in lines} == {str(dcmread(p).SOPInstanceUID) for p in files}
    _assert_orthanc_holds(orthanc, files)
