"""Result objects benchmark: the SEG and the draft SR of a CT study, built by highdicom and written by pydicom.

``python -m bench.results`` builds, for two CT studies, the expert's SEG and the draft SR exactly as the report stage
does (``build_segmentation``, ``build_draft_report``: highdicom's constructors, with their validation) and writes each
``--rounds`` times with pydicom's public writer (``save_as(enforce_file_format=True)``). The SEG is made both ways
``SEG_COMPRESSION`` allows: JPEG 2000 Lossless (the default) and uncompressed (the peer, what old viewers need and what
m3edge wrote before); it prints the medians, both sizes and the ratio:

- ``demo``: the pipeline benchmark's CT (48 x 48 x 24) with 31 VISTA3D structures as ellipsoids (about 150 frames);
- ``full``: a VISTA3D-sized result, ``--size`` x ``--size`` x ``--slices`` with ``--structures`` ellipsoidal organs
  (default 512 x 512 x 160, 40): thousands of SEG frames, the cost a real CT brings.

Compare within one run: the machine's other load shows in every number.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _headers(datasets):
    """What the report stage reads: the source instances without their pixels."""
    headers = []
    for dataset in datasets:
        header = copy.deepcopy(dataset)
        del header.PixelData
        headers.append(header)
    return headers


def _organs(shape, count: int, seed: int = 7) -> np.ndarray:
    """``count`` ellipsoids (label ids 1..count) of 10 to 30 % of the field of view, later ones painted over."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint8)
    for label in range(1, count + 1):
        centre = rng.uniform(0.25, 0.75, 3) * shape
        radii = np.maximum(rng.uniform(0.05, 0.15, 3) * shape, 2)
        low = np.maximum(np.floor(centre - radii).astype(int), 0)
        high = np.minimum(np.ceil(centre + radii).astype(int) + 1, shape)
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(low, high))]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
        labels[tuple(slice(a, b) for a, b in zip(low, high))][inside] = label
    return labels


def _case(name: str, size: int, slices: int, structures: int):
    from dicom_node.results import (AlgorithmIdentity, DraftReportContent, ExpertFindings, LabelSegmentation,
                                    Narrative, ResultUids, StructureSegment)
    from engines.experts.labels import vista3d_label_names
    from tests.support.pipeline_study import ct_study
    from tests.support.synthetic_series import SyntheticStudy, axial_geometry, ct_series

    if name == "demo":
        sources = _headers(ct_study())
    else:
        geometry = axial_geometry(size, size, slices, pixel_spacing=(0.78, 0.78), slice_spacing=1.5)
        sources = _headers(ct_series(np.zeros((size, size, slices), np.float32), geometry,
                                     study=SyntheticStudy(patient_id="M3E-BENCH")))
    first, second = sources[0], sources[1]
    columns, rows, spacing = (np.asarray(first.ImageOrientationPatient[:3], float),
                              np.asarray(first.ImageOrientationPatient[3:], float), first.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = columns * float(spacing[1])
    lps[:3, 1] = rows * float(spacing[0])
    lps[:3, 2] = np.subtract(second.ImagePositionPatient, first.ImagePositionPatient, dtype=float)
    lps[:3, 3] = np.asarray(first.ImagePositionPatient, float)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    shape = (int(first.Columns), int(first.Rows), len(sources))
    names = [n for _, n in sorted(vista3d_label_names().items()) if n][:structures]
    labels = _organs(shape, len(names))
    segments = tuple(StructureSegment(n, (i,), 1.0) for i, n in enumerate(names, start=1)
                     if np.any(labels == i))
    expert = AlgorithmIdentity("VISTA3D", "0.5.4", "NVIDIA", "tensorrt", "sha256:" + "cd" * 32, demo=True)
    vlm = AlgorithmIdentity("VILA-M3-8B", "1.0", "NVIDIA", "tensorrt-llm", "sha256:" + "ab" * 32, demo=True)
    findings = ExpertFindings(expert, tuple(sources), LabelSegmentation(labels, affine, segments))
    content = DraftReportContent(findings, Narrative("Describe the findings.", "Organs segmented. " * 20), vlm)
    return content, ResultUids("1.2.826.0.1.3680043.10.1177", str(first.StudyInstanceUID), "run-bench")


def _timed(function, rounds: int) -> tuple[float, object]:
    seconds, result = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def _written(dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _measure(name: str, rounds: int, size: int, slices: int, structures: int) -> dict:
    from dicom_node.results import SegCompression, build_draft_report, build_segmentation

    content, uids = _case(name, size, slices, structures)
    build_segmentation(content.findings, uids)  # warm-up: highdicom's first SEG loads its tables
    row: dict = {"case": name}
    for compression, key in ((SegCompression.NONE, "plain"), (SegCompression.JPEG2000_LOSSLESS, "j2k")):
        build_s, seg = _timed(lambda: build_segmentation(content.findings, uids, compression=compression),
                              max(1, rounds // 2))
        write_s, written = _timed(lambda seg=seg: _written(seg), rounds)
        row.update({f"build_seg_{key}_s": build_s, f"write_seg_{key}_s": write_s, f"seg_{key}_bytes": len(written),
                    "frames": int(seg.NumberOfFrames), "segments": len(seg.SegmentSequence)})
    row["seg_size_ratio"] = row["seg_plain_bytes"] / row["seg_j2k_bytes"]
    build_sr, sr = _timed(lambda: build_draft_report(content, uids, segmentation=seg), rounds)
    write_sr, written = _timed(lambda: _written(sr), rounds)
    row.update({"build_sr_s": build_sr, "write_sr_s": write_sr, "sr_bytes": len(written)})
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="builds and writes per object (median)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns of the full-size CT")
    parser.add_argument("--slices", type=int, default=160, help="slices of the full-size CT")
    parser.add_argument("--structures", type=int, default=40, help="VISTA3D structures in the full-size CT")
    parser.add_argument("--cases", default="demo,full", help="comma-separated: demo, full")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    rows = []
    for name in args.cases.split(","):
        _log(f"measuring {name} ...")
        structures = 31 if name == "demo" else args.structures
        rows.append(_measure(name, args.rounds, args.size, args.slices, structures))
    print(f"{'case':6} {'frames':>6} | {'SEG uncompressed: MB':>20} {'build s':>7} {'write s':>7} | "
          f"{'SEG JPEG 2000: MB':>17} {'build s':>7} {'write s':>7} | {'size ratio':>10} | {'SR: build s':>11} "
          f"{'write s':>7}")
    for r in rows:
        print(f"{r['case']:6} {r['frames']:6d} | {r['seg_plain_bytes'] / 1e6:20.2f} {r['build_seg_plain_s']:7.3f} "
              f"{r['write_seg_plain_s']:7.3f} | {r['seg_j2k_bytes'] / 1e6:17.3f} {r['build_seg_j2k_s']:7.3f} "
              f"{r['write_seg_j2k_s']:7.3f} | {r['seg_size_ratio']:10.1f} | {r['build_sr_s']:11.3f} "
              f"{r['write_sr_s']:7.3f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
