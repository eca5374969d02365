"""A person-readable summary of an SR's content tree: what a reader confirms before it is sent to PACS.

One line a content item, indented by depth, as ``Concept: value`` (TEXT, CODE, NUM with its unit, PNAME, DATE/TIME,
UIDREF; CONTAINER a heading; references to images and segments named, not expanded). Read with pydicom's public
data set API only; bounded to ``max_lines``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

__all__ = ["ContentLine", "sr_content_lines"]


@dataclass(frozen=True)
class ContentLine:
    depth: int
    concept: str
    value: str


def _meaning(sequence) -> str:
    return str(sequence[0].get("CodeMeaning", "")) if sequence else ""


def _value(item: Dataset) -> str:
    kind = str(item.get("ValueType", ""))
    if kind == "TEXT":
        return str(item.get("TextValue", ""))
    if kind == "CODE":
        return _meaning(item.get("ConceptCodeSequence"))
    if kind == "NUM":
        measured = item.get("MeasuredValueSequence")
        if not measured:
            return "(no value)"
        unit = _meaning(measured[0].get("MeasurementUnitsCodeSequence"))
        return f"{measured[0].get('NumericValue', '')} {unit}".strip()
    if kind == "PNAME":
        return str(item.get("PersonName", ""))
    if kind in ("DATE", "TIME", "DATETIME"):
        return str(item.get({"DATE": "Date", "TIME": "Time", "DATETIME": "DateTime"}[kind], ""))
    if kind == "UIDREF":
        return str(item.get("UID", ""))
    if kind == "IMAGE":
        return "image reference"
    if kind == "COMPOSITE":
        return "object reference"
    if kind == "CONTAINER":
        return ""
    return kind.lower()


def sr_content_lines(dataset: Dataset, *, max_lines: int = 400) -> list[ContentLine]:
    """The SR's document title, then its content items depth first."""
    lines = [ContentLine(0, "Document", _meaning(dataset.get("ConceptNameCodeSequence")))]

    def walk(items, depth: int) -> None:
        for item in items or []:
            if len(lines) >= max_lines:
                return
            lines.append(ContentLine(depth, _meaning(item.get("ConceptNameCodeSequence")), _value(item)))
            walk(item.get("ContentSequence"), depth + 1)

    walk(dataset.get("ContentSequence"), 1)
    return lines
