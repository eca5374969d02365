"""Stage ``report``'s and stage ``deliver``'s results: the DICOM objects written, and where they went."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from service.pipeline.contracts.base import Record, StageContract
from service.pipeline.stages import Stage

__all__ = ["ResultObject", "ReportResult", "DeliveryResult"]


class ResultObject(Record):
    """One DICOM object written for the run (SEG, SC or SR): its file and identity."""

    path: str
    sop_instance_uid: str
    sop_class_uid: str


class ReportResult(StageContract):
    """The objects to deliver, in the order they are sent (SEG, SC, then the SR that references them)."""

    STAGE: ClassVar[Stage] = Stage.REPORT

    objects: list[ResultObject] = Field(min_length=1)
    demo: bool


class DeliveryResult(StageContract):
    """The destinations of the route (``AE@host:port``) and how many objects were delivered."""

    STAGE: ClassVar[Stage] = Stage.DELIVER

    destinations: list[str] = Field(default_factory=list)
    delivered: int = Field(0, ge=0)
