"""pydicom's test data (pydicom's own files and pydicom-data's: several vendors, every common transfer syntax, and
files broken on purpose) sent to the node by dcmtk's storescu (each file's own transfer syntax proposed) and by
pynetdicom (each file streamed unchanged, a C-ECHO after every C-STORE): every file is stored byte for byte, or
refused with a status and the reason in ``REFUSED``; the node answers every C-ECHO.

Byte for byte means: what pynetdicom sent (the file's own data set) is what the node stored; what storescu sent
(dcmtk re-encodes as it sends) is what dcmtk's ``storescp +B`` (bit-preserving) kept of the same transfer.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_node.intake.statuses import (
    CANNOT_UNDERSTAND,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    INVALID_UID,
    SUCCESS,
    WARNING_CONFLICTING_DUPLICATE,
)
from tests.conftest import require_tool
from tests.support.corpus_transfer import Corpus, corpus_files, send_with_pynetdicom, send_with_storescu
from tests.support.dcmtk import dcmtk_env
from tests.support.dicom_corpus import dataset_bytes
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.scp_node import instances_in_db, running_node

STORED_BY_STORESCU = {"Success", "Warning: CoercionOfDataElements"}  # B000: a conflicting copy, kept beside
STORED_BY_PYNETDICOM = {SUCCESS, WARNING_CONFLICTING_DUPLICATE}
DCMTK_CANNOT_READ = "not sent: missing SOP class (or instance)"  # storescu's own check: dcmtk cannot parse the file
NO_META = "not sent: no File Meta naming its SOP Class, Instance and transfer syntax"
DICOMDIR = ("a DICOMDIR is a media file-set's directory (PS3.10), never sent over the network: the node offers no "
            "presentation context for Media Storage Directory Storage")
NO_STUDY = "no Study Instance UID in the data set: the node files instances by study (A900, 'StudyInstanceUID is missing')"

# file -> (storescu's outcome, pynetdicom's outcome, why). Every other file is stored by both.
REFUSED: dict[str, tuple[str, str | int, str]] = {
    "pydicom-data:bad_sequence.dcm": (
        "Error: CannotUnderstand", INVALID_UID,
        "its UIDs are SHA-256 hex strings, not UIDs (C220 as sent unchanged); dcmtk's re-encoding of its broken "
        "sequence no longer parses (C210)"),
    "pydicom-data:emri_small_jpeg_2k_lossless_too_short.dcm": (
        DCMTK_CANNOT_READ, WARNING_CONFLICTING_DUPLICATE,
        "truncated pixel data: dcmtk will not send it; as sent unchanged it is another copy of emri_small's SOP "
        "Instance, kept beside it"),
    "pydicom-data:explicit_VR-UN.dcm": (
        DCMTK_CANNOT_READ, SUCCESS, "an explicit-VR UN sequence holding implicit items: dcmtk cannot read it, the "
        "node can (stored as sent)"),
    "pydicom:JPEGLSNearLossless_08.dcm": ("Error: DataSetDoesNotMatchSOPClass", DATA_SET_DOES_NOT_MATCH_SOP_CLASS, NO_STUDY),
    "pydicom:JPEGLSNearLossless_16.dcm": ("Error: DataSetDoesNotMatchSOPClass", DATA_SET_DOES_NOT_MATCH_SOP_CLASS, NO_STUDY),
    "pydicom:SC_rgb_jls_lossy_line.dcm": ("Error: DataSetDoesNotMatchSOPClass", DATA_SET_DOES_NOT_MATCH_SOP_CLASS, NO_STUDY),
    "pydicom:SC_rgb_jls_lossy_sample.dcm": ("Error: DataSetDoesNotMatchSOPClass", DATA_SET_DOES_NOT_MATCH_SOP_CLASS, NO_STUDY),
    "pydicom:MR_truncated.dcm": (DCMTK_CANNOT_READ, WARNING_CONFLICTING_DUPLICATE,
                                 "truncated on purpose: dcmtk will not send it; sent unchanged, a second copy of "
                                 "MR_small's SOP Instance with other bytes, kept beside it"),
    "pydicom:rtplan_truncated.dcm": (DCMTK_CANNOT_READ, WARNING_CONFLICTING_DUPLICATE,
                                     "truncated on purpose: as MR_truncated.dcm, for rtplan.dcm"),
    "pydicom:SC_rgb_jpeg.dcm": (DCMTK_CANNOT_READ, WARNING_CONFLICTING_DUPLICATE,
                                "dcmtk cannot parse its JPEG fragments; sent unchanged, another encoding of an SOP "
                                "Instance of the SC_rgb set, kept beside it"),
    "pydicom:rtdose_rle.dcm": (DCMTK_CANNOT_READ, WARNING_CONFLICTING_DUPLICATE,
                               "dcmtk cannot parse it; sent unchanged, another encoding of rtdose's SOP Instance"),
    "pydicom:rtdose_rle_1frame.dcm": (DCMTK_CANNOT_READ, WARNING_CONFLICTING_DUPLICATE,
                                      "as rtdose_rle.dcm, one frame"),
    "pydicom:UN_sequence.dcm": (DCMTK_CANNOT_READ, DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                                "a bare UN sequence test data set: no Study Instance UID (A900); dcmtk cannot read it"),
    "pydicom:no_meta_group_length.dcm": (DCMTK_CANNOT_READ, DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                                         "a File Meta without its group length (dcmtk stops) and no Study Instance UID"),
    "pydicom:priv_SQ.dcm": (DCMTK_CANNOT_READ, DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                            "a private-sequence test data set without Study Instance UID"),
    "pydicom:empty_charset_LEI.dcm": (DCMTK_CANNOT_READ, NO_META, "a bare data set with an empty File Meta"),
    "pydicom:nested_priv_SQ.dcm": (DCMTK_CANNOT_READ, NO_META, "a bare data set with an empty File Meta"),
    "pydicom:meta_missing_tsyntax.dcm": ("not sent: storescu has no option proposing None", NO_META,
                                         "its File Meta has no Transfer Syntax UID: no sender can say how it is encoded"),
}
FILES = corpus_files()
for _file in FILES:
    if _file.sop_class == "1.2.840.10008.1.3.10":  # Media Storage Directory Storage
        REFUSED[_file.name] = (DCMTK_CANNOT_READ, "not sent: No presentation context", DICOMDIR)


def _kept_by_storescp(tmp_path: Path) -> dict[str, set[bytes]]:
    """dcmtk's bit-preserving storescp fed by the same storescu runs: SOP Instance UID -> data sets kept."""
    out = tmp_path / "storescp"
    out.mkdir()
    port = free_port()
    process = subprocess.Popen([require_tool("storescp"), "+B", "+xa", "+uf", "-od", str(out), "-aet", "STORESCP",
                                str(port)],
                               env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run(["echoscu", "-aec", "STORESCP", "127.0.0.1", str(port)], env=dcmtk_env(),
                                        capture_output=True).returncode == 0, timeout=30, message="storescp did not start")
        send_with_storescu(FILES, port, "STORESCP")
    finally:
        process.terminate()
        process.wait(timeout=30)
    kept: dict[str, set[bytes]] = defaultdict(set)
    for path in out.iterdir():
        kept[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)].add(dataset_bytes(path))
    return kept


@pytest.fixture(scope="module")
def transfer(tmp_path_factory):
    """Both senders to one node (one storescu association per transfer syntax, pynetdicom's in between); SQLite only:
    the database plays no part in what is stored byte for byte."""
    from service.db.migrate import upgrade_database
    from service.db.session import create_db_engine, make_session_factory

    tmp_path = tmp_path_factory.mktemp("corpus")
    kept = _kept_by_storescp(tmp_path)
    url = f"sqlite:///{tmp_path / 'm3edge.db'}"
    upgrade_database(url)
    engine = create_db_engine(url)
    session_factory = make_session_factory(engine)
    with running_node(tmp_path / "home", session_factory) as node:
        corpus = Corpus(storescu=send_with_storescu(FILES, node.port, "M3EDGE"))
        send_with_pynetdicom(FILES, node.port, "M3EDGE", corpus=corpus)
        stored: dict[str, set[bytes]] = defaultdict(set)
        for instance, _, _ in instances_in_db(session_factory):
            stored[instance.sop_instance_uid].add(dataset_bytes(node.spool.path_of(instance.path)))
    engine.dispose()
    return corpus, stored, kept


def test_the_corpus_is_pydicoms_and_pydicom_datas_and_every_c_echo_is_answered(transfer):
    corpus, _, _ = transfer
    names = [f.name for f in FILES]
    assert sum(n.startswith("pydicom-data:") for n in names) > 50, "pydicom-data is not installed (test extras)"
    assert sum(n.startswith("pydicom:") for n in names) > 80
    assert corpus.echoes and set(corpus.echoes) == {SUCCESS}


@pytest.mark.parametrize("item", FILES, ids=lambda f: f.name)
def test_each_file_is_stored_byte_for_byte_or_refused_for_its_reason(transfer, item):
    corpus, stored, kept = transfer
    by_storescu, by_pynetdicom = corpus.storescu[item.path], corpus.pynetdicom[item.path]
    if item.name in REFUSED:
        expected_storescu, expected_pynetdicom, _why = REFUSED[item.name]
        assert by_storescu.startswith(expected_storescu) if isinstance(by_storescu, str) else False, by_storescu
        if isinstance(expected_pynetdicom, str):
            assert isinstance(by_pynetdicom, str) and by_pynetdicom.startswith(expected_pynetdicom), by_pynetdicom
        else:
            assert by_pynetdicom == expected_pynetdicom, hex(by_pynetdicom) if isinstance(by_pynetdicom, int) else by_pynetdicom
    else:
        assert by_storescu in STORED_BY_STORESCU, by_storescu
        assert by_pynetdicom in STORED_BY_PYNETDICOM, by_pynetdicom
    if by_pynetdicom in STORED_BY_PYNETDICOM:  # the file's own data set, exactly
        assert dataset_bytes(item.path) in stored[item.stored_as]
    if by_storescu in STORED_BY_STORESCU:  # what dcmtk sent, exactly as dcmtk's bit-preserving storescp kept it
        assert kept[item.stored_as] and kept[item.stored_as] <= stored[item.stored_as]
