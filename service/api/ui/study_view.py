"""What the study page shows of a report, shaped for a reader: the findings as a table, the consultation as a
conversation, the overlay's legend, and a radiograph as a picture (for CR/DX studies, where no overlay is drawn).

Pure functions over the report's JSON (``service.api.routes.reports.report_json``) and the study's files; the page
template only lays them out.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from engines.images import OVERLAY_COLORS

__all__ = ["FindingRow", "Message", "finding_rows", "conversation", "overlay_legend", "radiograph_png",
           "PROJECTION_MODALITIES", "SCORE_PRESENT"]

SCORE_PRESENT = 0.5  # the protocol's "yes" for a CXR pathology score
PROJECTION_MODALITIES = {"CR", "DX", "DR", "RG"}
_MAX_PICTURE_SIDE = 1024


@dataclass(frozen=True)
class FindingRow:
    name: str
    volume_ml: float | None
    score: float | None
    present: bool
    correction: dict | None = None  # the reader's word on it, once amended


@dataclass(frozen=True)
class Message:
    role: str  # user | assistant | expert
    who: str
    text: str


def finding_rows(findings: dict | None) -> list[FindingRow]:
    """One row per structure or pathology: volume (segmentation experts), score (CXR) and present/absent."""
    findings = findings or {}
    volumes = findings.get("volumes_ml") or {}
    scores = findings.get("scores") or {}
    corrections = {c.get("name"): c for c in findings.get("reader_corrections") or [] if isinstance(c, dict)}
    rows = []
    for name in list(volumes) + [n for n in scores if n not in volumes]:
        volume = volumes.get(name)
        score = scores.get(name)
        volume = float(volume) if isinstance(volume, (int, float)) else None
        score = float(score) if isinstance(score, (int, float)) else None
        present = (volume is not None and volume > 0) or (score is not None and score >= SCORE_PRESENT)
        rows.append(FindingRow(str(name), volume, score, present, corrections.get(name)))
    return rows


def _user_text(text: str) -> str:
    return text.replace("<image>", "[image] ").strip()


def conversation(transcript: dict | None) -> list[Message]:
    """The consultation in order: each user turn, the model's answer, and the expert between the turns."""
    transcript = transcript or {}
    messages: list[Message] = []
    model = transcript.get("model") or "VILA-M3"
    expert = transcript.get("expert_call") or None
    for index, turn in enumerate(transcript.get("turns") or []):
        if index == 1 and expert:
            messages.append(Message("expert", str(expert.get("expert", "expert")), _expert_text(expert)))
        messages.append(Message("user", "m3edge (as the reader asked)", _user_text(str(turn.get("user_text", "")))))
        messages.append(Message("assistant", str(model), str(turn.get("answer") or "(no answer)")))
    if expert and len(transcript.get("turns") or []) < 2:
        messages.append(Message("expert", str(expert.get("expert", "expert")), _expert_text(expert)))
    return messages


def _expert_text(expert: dict) -> str:
    argument = f" ({expert['argument']})" if expert.get("argument") else ""
    result = expert.get("result") or {}
    volumes = result.get("volumes_ml") or {}
    found = ", ".join(f"{name} {value:.3g} mL" for name, value in volumes.items() if isinstance(value, (int, float)))
    source = expert.get("source", "")
    text = f"{expert.get('expert', 'expert')}{argument} {source}".strip()
    return text + (f": {found}" if found else "")


def overlay_legend(transcript: dict | None) -> list[tuple[str, str]]:
    """(colour, structure) pairs drawn on the overlay; colours outside the protocol's set are left out."""
    expert = (transcript or {}).get("expert_call") or {}
    legend = []
    for pair in expert.get("overlay_legend") or []:
        if isinstance(pair, (list, tuple)) and len(pair) == 2 and pair[0] in OVERLAY_COLORS:
            legend.append((str(pair[0]), str(pair[1])))
    return legend


def radiograph_png(path: Path) -> bytes:
    """A projection radiograph (the first frame of a received instance) as an 8-bit PNG for a quick look: its VOI
    window (or the full range), MONOCHROME1 inverted, at most 1024 pixels a side. Raises ValueError when the file
    holds no displayable image."""
    import numpy as np
    from PIL import Image
    from pydicom import dcmread
    from pydicom.pixels import apply_voi_lut

    dataset = dcmread(path)
    if "PixelData" not in dataset:
        raise ValueError("no pixel data")
    pixels = dataset.pixel_array
    if pixels.ndim == 3 and dataset.get("SamplesPerPixel", 1) == 1:
        pixels = pixels[0]
    if dataset.get("SamplesPerPixel", 1) == 1:
        windowed = apply_voi_lut(pixels, dataset).astype(np.float64)
        low, high = float(windowed.min()), float(windowed.max())
        scaled = (windowed - low) / (high - low or 1.0) * 255.0
        if str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            scaled = 255.0 - scaled
        image = Image.fromarray(scaled.astype(np.uint8), "L")
    else:
        image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    image.thumbnail((_MAX_PICTURE_SIDE, _MAX_PICTURE_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
