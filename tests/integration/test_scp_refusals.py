"""What the node refuses, and that it keeps serving afterwards: malformed data sets, crafted UIDs (path traversal),
a full disk, unknown callers, a full spool disk at association time, plain TCP when TLS is required."""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
import struct
import subprocess
from pathlib import Path

import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import SecondaryCaptureImageStorage, Verification

from dicom_node.network import AllowedCaller
from dicom_node.intake.header import encode_file_meta
from dicom_node.intake.spool import SpoolWriter
from dicom_node.intake.statuses import (
    CANNOT_UNDERSTAND,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    INVALID_UID,
    OUT_OF_RESOURCES,
    SUCCESS,
)
from service.config import TlsSettings
from tests.support.dcmtk import echoscu, storescu
from tests.support.dicom_corpus import write_ct_series
from tests.support.polling import wait_for
from tests.support.scp_node import instances_in_db, running_node

EXPLICIT = "1.2.840.10008.1.2.1"
COMMAND_SOP_UID = "1.2.3.4.5.6.7"


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _data_set(study: str | None = "1.2.3", series: str | None = "1.2.3.4", sop: str | None = "1.2.3.4.5") -> bytes:
    """A minimal Secondary Capture data set, encoded by hand so any UID (even a crafted one) can be written."""
    parts = [_element(0x0008, 0x0016, b"UI", SecondaryCaptureImageStorage.encode())]
    if sop is not None:
        parts.append(_element(0x0008, 0x0018, b"UI", sop.encode()))
    parts.append(_element(0x0008, 0x0060, b"CS", b"OT"))
    if study is not None:
        parts.append(_element(0x0020, 0x000D, b"UI", study.encode()))
    if series is not None:
        parts.append(_element(0x0020, 0x000E, b"UI", series.encode()))
    return b"".join(parts)


def _file(tmp_path: Path, name: str, data_set: bytes) -> Path:
    """A Part 10 file whose File Meta is sound (so the SCU can send it) and whose data set is exactly ``data_set``."""
    path = tmp_path / name
    path.write_bytes(encode_file_meta(SecondaryCaptureImageStorage, COMMAND_SOP_UID, EXPLICIT, "TESTER") + data_set)
    return path


def _send(port: int, files: list[Path], **associate) -> list[int]:
    """Stream each file's data set unchanged over one association (pynetdicom SCU); return the statuses."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title="TESTER")
        ae.add_requested_context(SecondaryCaptureImageStorage, EXPLICIT)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="M3EDGE", **associate)
        assert assoc.is_established
        statuses = [int(assoc.send_c_store(path).Status) for path in files]
        statuses.append(int(assoc.send_c_echo().Status))  # the association is still served afterwards
        assoc.release()
        return statuses
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False


def _all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_malformed_data_sets_fail_with_a_clear_status_and_the_node_keeps_serving(tmp_path, session_factory, caplog):
    cases = {
        "garbage.dcm": (os.urandom(64) + b"\xff" * 64, CANNOT_UNDERSTAND),
        "zeros.dcm": (b"\x00" * 128, CANNOT_UNDERSTAND),
        "truncated.dcm": (_data_set()[:-6], CANNOT_UNDERSTAND),
        "no-study.dcm": (_data_set(study=None), DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
        "no-series.dcm": (_data_set(series=None), DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
        "no-sop.dcm": (_data_set(sop=None), DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
    }
    files = [_file(tmp_path, name, data) for name, (data, _) in cases.items()]
    good = _file(tmp_path, "good.dcm", _data_set())
    with caplog.at_level(logging.WARNING, logger="dicom_node"), running_node(tmp_path / "home", session_factory) as node:
        statuses = _send(node.port, [*files, good])
        rows = instances_in_db(session_factory)
        echo = echoscu(node.port)
    assert statuses == [status for _, status in cases.values()] + [SUCCESS, SUCCESS]
    assert [instance.sop_instance_uid for instance, _, _ in rows] == ["1.2.3.4.5"]
    assert echo.returncode == 0
    refusals = [r.getMessage() for r in caplog.records if "refused with status" in r.getMessage()]
    assert len(refusals) == len(cases)
    assert any("0xA900" in line and "StudyInstanceUID is missing" in line for line in refusals)


@pytest.mark.parametrize("attribute", ["study", "series", "sop"])
@pytest.mark.parametrize(
    "crafted", ["..", "../../../../tmp/escaped", "/etc/passwd", "1.2/../../x", "1" * 65, "1.2.3a", "1.2.3\\..\\x"]
)
def test_crafted_uids_are_refused_and_nothing_escapes_the_spool(tmp_path, session_factory, attribute, crafted):
    uids = {"study": "1.2.3", "series": "1.2.3.4", "sop": "1.2.3.4.5", attribute: crafted}
    sent = _file(tmp_path / "send", "crafted.dcm", _data_set(**uids)) if (tmp_path / "send").mkdir() is None else None
    home = tmp_path / "deep" / "er" / "home"  # parents to climb into, if a UID could climb
    before = _all_files(tmp_path)
    with running_node(home, session_factory) as node:
        statuses = _send(node.port, [sent])
        rows = instances_in_db(session_factory)
    assert statuses == [INVALID_UID, SUCCESS]
    assert rows == []
    created = _all_files(tmp_path) - before
    assert created == set(), created  # no instance anywhere, and no temporary file left in the spool
    assert not Path("/tmp/escaped").exists()


def test_a_full_disk_answers_out_of_resources(tmp_path, session_factory, monkeypatch):
    class DiskFullSpool(SpoolWriter):
        """Temporary files on /dev/full: every write fails with the kernel's real ENOSPC."""

        def _open_new(self, temp: str | None) -> int:
            return os.open("/dev/full", os.O_WRONLY)

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # The journal (where a C-STORE's bytes go first) reserves its space up front: that is where a full disk shows.
    monkeypatch.setattr(os, "posix_fallocate", no_space)
    spool = DiskFullSpool(tmp_path / "home" / "spool")
    with running_node(tmp_path / "home", session_factory, spool=spool) as node:
        statuses = _send(node.port, [_file(tmp_path, "a.dcm", _data_set()), _file(tmp_path, "b.dcm", _data_set())])
        rows = instances_in_db(session_factory)
    assert statuses == [OUT_OF_RESOURCES, OUT_OF_RESOURCES, SUCCESS]
    assert rows == []


def test_unlisted_calling_ae_titles_are_rejected_with_the_standard_reason(tmp_path, session_factory, caplog):
    allowed = [AllowedCaller.parse("PACS"), AllowedCaller.parse("BOUND@10.255.0.1")]
    with caplog.at_level(logging.WARNING, logger="dicom_node"), running_node(
        tmp_path, session_factory, dicom_allowed_aes=allowed
    ) as node:
        accepted = echoscu(node.port, calling_ae="PACS")
        unknown = echoscu(node.port, calling_ae="INTRUDER")
        wrong_host = echoscu(node.port, calling_ae="BOUND")
    assert accepted.returncode == 0, accepted.stderr
    for refused in (unknown, wrong_host):
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "'INTRUDER'" in logged and "calling AE not recognised" in logged
    assert "allowed, but not from 127.0.0.1" in logged


def _non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback (from the kernel's local routing table), if any."""
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        return None
    for previous, line in zip(lines, lines[1:]):
        if "32 host LOCAL" in line:
            address = previous.strip().removeprefix("|-- ").strip()
            if not address.startswith("127."):
                return address
    return None


def test_without_an_allowed_list_only_loopback_callers_get_in(tmp_path, session_factory, caplog):
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to call from")
    with caplog.at_level(logging.WARNING, logger="dicom_node"), running_node(
        tmp_path, session_factory, dicom_host="0.0.0.0"
    ) as node:
        local = echoscu(node.port, host="127.0.0.1")
        remote = echoscu(node.port, host=address)  # the connection's source is this non-loopback address
    assert local.returncode == 0, local.stderr
    assert remote.returncode != 0 and "Calling AE Title Not Recognized" in remote.stdout + remote.stderr
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "only callers on this machine (loopback)" in logged  # the start-up warning about the default
    assert "only loopback callers are accepted" in logged


def test_a_spool_disk_below_its_reserve_refuses_new_associations(tmp_path, session_factory, caplog):
    series = write_ct_series(tmp_path / "ct", 1, rows=32, columns=32)
    with caplog.at_level(logging.WARNING, logger="dicom_node"), running_node(
        tmp_path / "home", session_factory, spool_reserve_bytes=1 << 62
    ) as node:
        echo = echoscu(node.port)
        store = storescu(node.port, series.paths)
        rows = instances_in_db(session_factory)
    assert echo.returncode != 0 and "Local Limit Exceeded" in echo.stdout + echo.stderr
    assert store.returncode != 0 and rows == []
    assert "SPOOL_RESERVE_BYTES" in " ".join(r.getMessage() for r in caplog.records)


def test_a_spool_disk_above_its_high_water_mark_refuses_new_associations(tmp_path, session_factory):
    with running_node(tmp_path, session_factory, spool_high_water_percent=0.0001) as node:
        echo = echoscu(node.port)
    assert echo.returncode != 0 and "Local Limit Exceeded" in echo.stdout + echo.stderr


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "node.pem", folder / "node.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def test_with_tls_a_tls_client_gets_through_and_a_plain_one_does_not(tmp_path, session_factory, certificate):
    cert, key = certificate
    tls = TlsSettings(certificate=cert, private_key=key)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    with running_node(tmp_path / "home", session_factory, dicom_tls=tls) as node:
        statuses = _send(node.port, [_file(tmp_path, "a.dcm", _data_set())], tls_args=(client, "localhost"))
        plain = AE(ae_title="PLAIN")
        plain.add_requested_context(Verification)
        plain.acse_timeout = 5
        plain.network_timeout = 5
        assoc = plain.associate("127.0.0.1", node.port, ae_title="M3EDGE")
        plain_established = assoc.is_established
        if plain_established:
            assoc.release()
        rows = instances_in_db(session_factory)
    assert statuses == [SUCCESS, SUCCESS]
    assert len(rows) == 1
    assert not plain_established


def test_a_required_client_certificate_is_checked_against_the_configured_ca(tmp_path, session_factory, certificate):
    cert, key = certificate  # self-signed: it is its own CA, for the node and for the client
    tls = TlsSettings(certificate=cert, private_key=key, ca_certificates=cert, require_client_certificate=True)
    with_certificate = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    with_certificate.load_cert_chain(str(cert), str(key))
    without_certificate = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    with running_node(tmp_path / "home", session_factory, dicom_tls=tls) as node:
        statuses = _send(node.port, [_file(tmp_path, "a.dcm", _data_set())], tls_args=(with_certificate, "localhost"))
        anonymous = AE(ae_title="ANON")
        anonymous.add_requested_context(Verification)
        anonymous.acse_timeout = anonymous.network_timeout = 5
        assoc = anonymous.associate("127.0.0.1", node.port, ae_title="M3EDGE", tls_args=(without_certificate, "localhost"))
        anonymous_established = assoc.is_established
        if anonymous_established:
            assoc.release()
    assert statuses == [SUCCESS, SUCCESS]
    assert not anonymous_established


def test_association_and_pdu_limits_come_from_the_settings(tmp_path, session_factory):
    with running_node(tmp_path, session_factory, dicom_max_associations=1, dicom_max_pdu_size=65536) as node:
        holder = AE(ae_title="HOLDER")
        holder.add_requested_context(Verification)
        held = holder.associate("127.0.0.1", node.port, ae_title="M3EDGE")
        assert held.is_established
        advertised = held.acceptor.maximum_length
        second = echoscu(node.port)  # one association is open: the next is over the limit
        held.release()
        after = wait_for(lambda: echoscu(node.port).returncode == 0, timeout=15, message="the slot never freed")
    assert advertised == 65536
    assert second.returncode != 0 and "Local Limit Exceeded" in second.stdout + second.stderr
    assert after
