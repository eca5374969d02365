"""Every DICOM file of pydicom's test data (pydicom's own and pydicom-data's) sent to a DICOM peer, the way a site
would: dcmtk's storescu proposing each file's own transfer syntax (one association per syntax), and pynetdicom's SCU
streaming each file as it is (one association per 128 presentation contexts, a C-ECHO after every C-STORE)."""

from __future__ import annotations

import subprocess
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.misc import is_dicom

from tests.support.dcmtk import STORESCU_PROPOSAL, StorescuResult, dcmtk_env, storescu_command

__all__ = ["corpus_files", "Corpus", "send_with_storescu", "send_with_pynetdicom"]


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    transfer_syntax: str | None  # None: no File Meta a sender can use
    sop_class: str | None
    sop_instance: str | None  # as the File Meta says (what a sender announces)
    stored_as: str | None = None  # the data set's own SOP Instance UID (what the node files it under)

    @property
    def name(self) -> str:
        """``pydicom:<path in its test files>`` or ``pydicom-data:<path in its data store>``."""
        parts = self.path.parts
        if "data_store" in parts:
            return "pydicom-data:" + "/".join(parts[parts.index("data_store") + 2:])
        return "pydicom:" + "/".join(parts[parts.index("test_files") + 1:])


def corpus_files() -> list[CorpusFile]:
    """Every file of pydicom's test data that is a DICOM file (preamble and DICM), sorted."""
    from pydicom.data import get_testdata_files

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the files it cannot download here
        paths = sorted({Path(p) for p in get_testdata_files()})
    files = []
    for path in paths:
        if not path.is_file() or not is_dicom(path):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = dcmread(path, stop_before_pixels=True)
            meta = header.file_meta
            files.append(CorpusFile(path, _text(meta.get("TransferSyntaxUID")),
                                    _text(meta.get("MediaStorageSOPClassUID")),
                                    _text(meta.get("MediaStorageSOPInstanceUID")), _text(header.get("SOPInstanceUID"))))
        except Exception:  # noqa: BLE001 - deliberately broken files: recorded as unreadable by pydicom
            files.append(CorpusFile(path, None, None, None))
    return files


def _text(value) -> str | None:
    return None if value in (None, "") else str(value)


@dataclass
class Corpus:
    """What each file got: storescu's answer (text), pynetdicom's (status code, or what stopped the send)."""

    storescu: dict[Path, str] = field(default_factory=dict)
    pynetdicom: dict[Path, int | str] = field(default_factory=dict)
    echoes: list[int] = field(default_factory=list)


def send_with_storescu(files: list[CorpusFile], port: int, called_ae: str, calling_ae: str = "CORPUS") -> dict[Path, str]:
    """One storescu association per transfer syntax, proposing exactly the files' own; each file's answer (or the
    reason storescu gave for not sending it)."""
    groups: dict[str, list[Path]] = defaultdict(list)
    answers: dict[Path, str] = {}
    for item in files:
        if item.transfer_syntax in STORESCU_PROPOSAL:
            groups[item.transfer_syntax].append(item.path)
        else:
            answers[item.path] = f"not sent: storescu has no option proposing {item.transfer_syntax}"
    for syntax, paths in sorted(groups.items()):
        command = storescu_command(port, paths, calling_ae=calling_ae, called_ae=called_ae, proposal=syntax,
                                   extra=["-R", "-nh"])
        completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                                   env=dcmtk_env())
        result = StorescuResult(completed.returncode, completed.stdout)
        responses = result.responses()
        for path in paths:
            answers[path] = responses.get(path) or _storescu_reason(completed.stdout, path)
    return answers


def _storescu_reason(output: str, path: Path) -> str:
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if str(path) in line and (line.startswith("E:") or line.startswith("F:") or line.startswith("W:")):
            detail = line.split(": ", 1)[1].replace(str(path), "").replace(" in file: , ignoring file", "").strip(" :")
            following = lines[index + 1] if index + 1 < len(lines) else ""
            return "not sent: " + (detail or following.split(": ", 1)[-1]).strip()
    return "not sent"


def send_with_pynetdicom(files: list[CorpusFile], port: int, called_ae: str, calling_ae: str = "CORPUS",
                         corpus: Corpus | None = None) -> Corpus:
    """pynetdicom's SCU streaming each sendable file unchanged; a C-ECHO after every C-STORE."""
    from pynetdicom import AE, _config

    corpus = corpus or Corpus()
    sendable = [f for f in files if f.transfer_syntax and f.sop_class and f.sop_instance]
    for item in files:
        if item not in sendable:
            corpus.pynetdicom[item.path] = "not sent: no File Meta naming its SOP Class, Instance and transfer syntax"
    contexts = sorted({(f.sop_class, f.transfer_syntax) for f in sendable})
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # the file's own bytes, not a re-encoding
    try:
        for start in range(0, len(contexts), 127):
            group = set(contexts[start:start + 127])
            ae = AE(ae_title=calling_ae)
            ae.add_requested_context("1.2.840.10008.1.1")
            for sop_class, syntax in sorted(group):
                ae.add_requested_context(sop_class, syntax)
            assoc = None
            for item in sendable:
                if (item.sop_class, item.transfer_syntax) not in group:
                    continue
                if assoc is None or not assoc.is_established:
                    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
                    assert assoc.is_established, "the node refused the corpus association"
                try:
                    answer = assoc.send_c_store(item.path)
                    corpus.pynetdicom[item.path] = int(answer.Status) if "Status" in answer else "no answer"
                except (ValueError, AttributeError) as exc:
                    corpus.pynetdicom[item.path] = f"not sent: {exc}"[:200]
                if not assoc.is_established:
                    corpus.pynetdicom[item.path] = "association aborted"
                    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
                echo = assoc.send_c_echo()
                corpus.echoes.append(int(echo.Status) if "Status" in echo else -1)
            if assoc is not None and assoc.is_established:
                assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return corpus
