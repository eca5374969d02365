"""The Storage SCU against a pynetdicom Storage SCP on loopback that answers what each case needs
(transient and permanent statuses, an AE it does not know, SOP classes it does not take)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification  # type: ignore[attr-defined]

from dicom_node.network import DicomAddress
from dicom_node.scu import (
    AssociationRejected,
    DestinationUnreachable,
    EchoFailed,
    RetryPolicy,
    StorageSCU,
)
from tests.support.dicom_corpus import write_ct_series
from tests.support.ports import free_port

OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH = 0xA900
FAST_RETRY = RetryPolicy(attempts=3, first_delay=0.5, multiplier=2.0, max_delay=10.0)


def _ct_files(tmp_path, count: int):
    """A small generated CT series (64x64 pixels) of ``count`` files."""
    return write_ct_series(tmp_path / "ct", count, rows=64, columns=64).paths


class PeerSCP:
    """A Storage SCP whose answer to each C-STORE comes from ``statuses(sop_instance_uid, nth_time_seen)``."""

    def __init__(self, statuses: Callable[[str, int], int] = lambda uid, n: 0x0000, *, contexts=None,
                 require_calling_aet: list[str] | None = None, echo_status: int = 0x0000,
                 port: int | None = None, abort_on: Callable[[str, int], bool] = lambda uid, n: False) -> None:
        self.port = port or free_port()
        self.abort_on = abort_on
        self.received: dict[str, list[bytes]] = {}
        self.statuses = statuses
        self.echo_status = echo_status
        ae = AE(ae_title="PEER")
        for context in contexts or [CTImageStorage, MRImageStorage]:
            ae.add_supported_context(context, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        ae.add_supported_context(Verification)
        if require_calling_aet:
            ae.require_calling_aet = require_calling_aet
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: self.echo_status)],
        )

    @property
    def address(self) -> DicomAddress:
        return DicomAddress("PEER", "127.0.0.1", self.port)

    def _on_store(self, event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        copies = self.received.setdefault(uid, [])
        if self.abort_on(uid, len(copies) + 1):
            copies.append(b"")
            event.assoc.abort()
            return OUT_OF_RESOURCES
        status = self.statuses(uid, len(copies) + 1)
        if status in (0x0000, 0xB000):
            copies.append(event.encoded_dataset())
        else:
            copies.append(b"")
        return status

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def peer_factory() -> Iterator[Callable[..., PeerSCP]]:
    peers: list[PeerSCP] = []

    def make(*args, **kwargs) -> PeerSCP:
        peers.append(PeerSCP(*args, **kwargs))
        return peers[-1]

    yield make
    for peer in peers:
        peer.stop()


class RecordedSleep:
    def __init__(self, on_sleep: Callable[[int], None] | None = None) -> None:
        self.delays: list[float] = []
        self.on_sleep = on_sleep

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.on_sleep:
            self.on_sleep(len(self.delays))


def test_every_file_is_delivered_byte_for_byte_over_one_association(tmp_path, peer_factory):
    peer = peer_factory()
    files = _ct_files(tmp_path, 4)
    report = StorageSCU("M3EDGE").send(peer.address, files)
    assert report.all_delivered and report.associations == 1
    assert [o.status for o in report.outcomes] == [0x0000] * 4
    for path, outcome in zip(files, report.outcomes, strict=True):
        sent = dcmread(path)
        assert outcome.sop_instance_uid == sent.SOPInstanceUID
        [received] = peer.received[outcome.sop_instance_uid]
        assert sent.PixelData in received


def test_a_transient_status_is_retried_after_a_back_off(tmp_path, peer_factory):
    files = _ct_files(tmp_path, 3)
    busy = str(dcmread(files[1]).SOPInstanceUID)
    peer = peer_factory(lambda uid, n: OUT_OF_RESOURCES if uid == busy and n == 1 else 0x0000)
    sleep = RecordedSleep()
    report = StorageSCU("M3EDGE", retry=FAST_RETRY, sleep=sleep).send(peer.address, files)
    assert report.all_delivered and report.associations == 2
    assert [o.attempts for o in report.outcomes] == [1, 2, 1]
    assert sleep.delays == [0.5]
    assert len(peer.received[busy]) == 2


def test_a_permanent_failure_is_reported_and_not_retried(tmp_path, peer_factory):
    files = _ct_files(tmp_path, 3)
    bad = str(dcmread(files[0]).SOPInstanceUID)
    peer = peer_factory(lambda uid, n: DATA_SET_DOES_NOT_MATCH if uid == bad else 0x0000)
    sleep = RecordedSleep()
    report = StorageSCU("M3EDGE", retry=FAST_RETRY, sleep=sleep).send(peer.address, files)
    [failed] = report.failed
    assert (failed.sop_instance_uid, failed.status, failed.attempts) == (bad, DATA_SET_DOES_NOT_MATCH, 1)
    assert "refused with status 0xA900" in failed.error
    assert len(report.delivered) == 2 and sleep.delays == []


def test_an_association_aborted_mid_transfer_is_resumed_with_what_was_not_delivered(tmp_path, peer_factory):
    files = _ct_files(tmp_path, 4)
    uids = [str(dcmread(path).SOPInstanceUID) for path in files]
    peer = peer_factory(abort_on=lambda uid, n: uid == uids[1] and n == 1)
    sleep = RecordedSleep()
    # pynetdicom may already be sending the next request when the abort lands; it then waits out the DIMSE timeout
    scu = StorageSCU("M3EDGE", retry=FAST_RETRY, sleep=sleep, dimse_timeout=2)
    report = scu.send(peer.address, files)
    assert report.all_delivered and report.associations == 2
    assert (report.outcomes[0].attempts, report.outcomes[1].attempts) == (1, 2)
    assert [len(peer.received[uid]) for uid in uids[:2]] == [1, 2]
    assert sleep.delays == [0.5]


def test_a_status_that_stays_transient_fails_after_the_last_attempt(tmp_path, peer_factory):
    files = _ct_files(tmp_path, 1)
    peer = peer_factory(lambda uid, n: OUT_OF_RESOURCES)
    sleep = RecordedSleep()
    report = StorageSCU("M3EDGE", retry=FAST_RETRY, sleep=sleep).send(peer.address, files)
    [outcome] = report.outcomes
    assert (outcome.delivered, outcome.status, outcome.attempts) == (False, OUT_OF_RESOURCES, 3)
    assert "0xA700 (transient)" in outcome.error
    assert sleep.delays == [0.5, 1.0]


def test_a_destination_that_comes_up_during_the_back_off_gets_the_files(tmp_path, peer_factory):
    files = _ct_files(tmp_path, 2)
    port = free_port()

    def start_peer_on_second_wait(nth: int) -> None:
        if nth == 2:
            peer_factory(port=port)

    sleep = RecordedSleep(start_peer_on_second_wait)
    scu = StorageSCU("M3EDGE", retry=RetryPolicy(attempts=4, first_delay=0.25), sleep=sleep)
    report = scu.send(DicomAddress("PEER", "127.0.0.1", port), files)
    assert report.all_delivered
    assert sleep.delays == [0.25, 0.5]


def test_an_unreachable_destination_raises_after_every_attempt(tmp_path):
    files = _ct_files(tmp_path, 1)
    sleep = RecordedSleep()
    scu = StorageSCU("M3EDGE", retry=FAST_RETRY, sleep=sleep)
    unreachable = r"cannot connect to PEER@127.0.0.1:\d+ .*gave up after 3 attempts"
    with pytest.raises(DestinationUnreachable, match=unreachable):
        scu.send(DicomAddress("PEER", "127.0.0.1", free_port()), files)
    assert sleep.delays == [0.5, 1.0]


def test_a_destination_that_does_not_know_our_ae_title_is_a_clear_permanent_error(tmp_path, peer_factory):
    peer = peer_factory(require_calling_aet=["SOMEONE"])
    sleep = RecordedSleep()
    with pytest.raises(AssociationRejected, match="add 'M3EDGE' .* to the destination's known AEs") as raised:
        StorageSCU("M3EDGE", retry=FAST_RETRY, sleep=sleep).send(peer.address, _ct_files(tmp_path, 1))
    assert raised.value.permanent and sleep.delays == []
    assert peer.received == {}


def test_a_sop_class_the_destination_does_not_take_fails_alone(tmp_path, peer_factory):
    peer = peer_factory(contexts=[CTImageStorage])
    files = _ct_files(tmp_path, 2)
    mr = dcmread(files[1])
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = MRImageStorage
    mr.Modality = "MR"
    mr.save_as(files[1])
    report = StorageSCU("M3EDGE").send(peer.address, files)
    assert [o.delivered for o in report.outcomes] == [True, False]
    assert "accepted no presentation context for SOP class 1.2.840.10008.5.1.4.1.1.4" in report.outcomes[1].error


def test_a_file_that_is_not_dicom_is_reported_and_the_rest_goes(tmp_path, peer_factory):
    peer = peer_factory()
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    files = [junk, *_ct_files(tmp_path, 1)]
    report = StorageSCU("M3EDGE").send(peer.address, files)
    assert [o.delivered for o in report.outcomes] == [False, True]
    assert "not a readable DICOM Part 10 file" in report.outcomes[0].error
    assert report.outcomes[0].attempts == 0


def test_echo_answers_the_round_trip_or_names_the_failure(peer_factory):
    ok = peer_factory()
    assert StorageSCU("M3EDGE").echo(ok.address) >= 0
    failing = peer_factory(echo_status=0x0211)
    with pytest.raises(EchoFailed, match="answered status 0x0211"):
        StorageSCU("M3EDGE").echo(failing.address)
    with pytest.raises(DestinationUnreachable, match="cannot connect"):
        StorageSCU("M3EDGE").echo(DicomAddress("NOBODY", "127.0.0.1", free_port()))


def test_an_explicit_vr_file_goes_to_a_peer_that_only_takes_implicit_vr(tmp_path):
    ae = AE(ae_title="PEER")
    ae.add_supported_context(CTImageStorage, ImplicitVRLittleEndian)
    received: list = []
    port = free_port()

    def on_store(event) -> int:
        received.append((event.context.transfer_syntax, event.dataset))
        return 0x0000

    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        [path] = _ct_files(tmp_path, 1)
        report = StorageSCU("M3EDGE").send(DicomAddress("PEER", "127.0.0.1", port), [path])
    finally:
        server.shutdown()
    assert report.all_delivered
    [(transfer_syntax, dataset)] = received
    assert transfer_syntax == ImplicitVRLittleEndian
    assert dataset.PixelData == dcmread(path).PixelData


def _minimal_instance(folder, sop_class: str) -> str:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_more_sop_classes_than_one_association_can_negotiate_take_a_second_one(tmp_path, peer_factory):
    sop_classes = [cx.abstract_syntax for cx in AllStoragePresentationContexts[:70]]
    peer = peer_factory(contexts=sop_classes)
    files = [_minimal_instance(tmp_path, sop_class) for sop_class in sop_classes]
    report = StorageSCU("M3EDGE").send(peer.address, files)  # 70 classes x 2 uncompressed syntaxes > 128 contexts
    assert report.all_delivered and report.associations == 2
    assert set(peer.received) == {o.sop_instance_uid for o in report.outcomes}


def test_retry_policy_grows_exponentially_up_to_its_ceiling():
    policy = RetryPolicy(attempts=6, first_delay=1, multiplier=3, max_delay=20)
    assert [policy.delay(n) for n in range(1, 6)] == [1, 3, 9, 20, 20]
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        RetryPolicy(attempts=0)


def test_a_calling_ae_title_is_validated():
    with pytest.raises(ValueError, match="1-16 printable ASCII"):
        StorageSCU("A" * 17)

