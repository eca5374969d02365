"""What the intake tells its recorder (the service's database) about each instance, and the protocol it expects.

``dicom_node`` never imports the service: the service passes an object with these methods to the intake.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

__all__ = ["ReceivedInstance", "InstanceRecorder", "RecorderError", "begin_recording"]


class RecorderError(RuntimeError):
    """The recorder could not commit an instance; the C-STORE fails so the sender retries it."""


@dataclass(frozen=True)
class ReceivedInstance:
    """One instance on disk, with the attributes the database keeps: descriptive ones and the patient context that
    signed-in reviewers see (name, ID, accession number; never dates of birth). The node never logs them. (Its
    header as DICOM JSON is kept later, off the receiving process: ``service.dicomweb.metadata_keeper``.)"""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    relative_path: str  # inside the spool
    size_bytes: int
    digest: str  # SHA-256, hex (64 characters)
    conflict: bool  # a second copy of the SOP Instance UID with different content
    duplicate: bool  # these exact bytes were already in the spool (a re-send)
    calling_ae: str
    received_at: datetime
    modality: str = ""
    study_description: str = ""
    study_date: str = ""
    series_description: str = ""
    series_number: int | None = None
    body_part_examined: str = ""
    patient_name: str = field(default="", repr=False)
    patient_id: str = field(default="", repr=False)
    accession_number: str = field(default="", repr=False)
    # The first instance its association (or STOW-RS request) committed into this study: the study has one more
    # sender until ``associations_ended`` names it.
    opens_association: bool = False


@runtime_checkable
class InstanceRecorder(Protocol):
    """Where the node records what it stored. Both methods may be called from many threads at once."""

    def record(self, instance: ReceivedInstance) -> None:
        """Return only once the instance's row is durably committed; raise ``RecorderError`` otherwise."""

    def associations_ended(self, study_uids: Collection[str], ended_at: datetime) -> None:
        """An association that stored into these studies was released or aborted (assembly's 'released' signal).

        ``study_uids`` are the studies into which it committed an instance marked ``opens_association``."""


def begin_recording(recorder: InstanceRecorder, instance: ReceivedInstance) -> Callable[[], None]:
    """Start recording ``instance``; the returned function waits for the commit (raising ``RecorderError``).

    A recorder with ``begin_record`` commits while the caller goes on (the node syncs the spool directory meanwhile);
    any other recorder records right here and the returned function has nothing left to wait for.
    """
    begin = getattr(recorder, "begin_record", None)
    if begin is not None:
        return begin(instance)
    recorder.record(instance)
    return _nothing_to_wait_for


def _nothing_to_wait_for() -> None:
    return None
