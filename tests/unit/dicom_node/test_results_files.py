"""``write_result`` writes each result object to the very bytes ``save_as`` writes, walking the tree once."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pydicom
import pydicom.filewriter
import pytest

from dicom_node.results import (
    Amendment,
    VerifyingObserver,
    build_draft_report,
    build_overlay_capture,
    build_retraction,
    build_segmentation,
    build_verified_report,
    write_result,
)
from tests.support.result_cases import FIXED_TIME, brain_case, ct_case, cxr_case, nothing_found_case

READER = VerifyingObserver("Reader^Rita", "Test Hospital Radiology")


def _objects(case) -> dict:
    findings = case.content.findings
    seg = build_segmentation(findings, case.uids, now=FIXED_TIME) if findings.segmentation is not None else None
    draft = build_draft_report(case.content, case.uids, segmentation=seg, now=FIXED_TIME)
    source = findings.source_images[0]
    overlay = np.full((int(source.Rows), int(source.Columns), 3), 90, dtype=np.uint8)
    objects = {
        "draft": draft,
        "verified": build_verified_report(draft, READER, case.uids, amendment=Amendment("Checked."), now=FIXED_TIME),
        "overlay": build_overlay_capture(overlay, source, findings.algorithm, case.uids, now=FIXED_TIME),
        "retraction": build_retraction([draft], READER, case.uids, explanation="Wrong series", now=FIXED_TIME),
    }
    if seg is not None:
        objects["seg"] = seg
    return objects


@pytest.mark.parametrize("make", [ct_case, brain_case, cxr_case, nothing_found_case], ids=lambda f: f.__name__)
def test_write_result_writes_the_bytes_save_as_writes(make):
    for name, dataset in _objects(make(demo=False)).items():
        plain, once = BytesIO(), BytesIO()
        dataset.save_as(plain, enforce_file_format=True)
        write_result(dataset, once)
        assert once.getvalue() == plain.getvalue(), name
        again = pydicom.dcmread(BytesIO(once.getvalue()))
        assert again.SOPInstanceUID == dataset.SOPInstanceUID


def test_write_result_corrects_ambiguous_vrs_once_for_the_whole_tree(monkeypatch):
    seg = build_segmentation(ct_case().content.findings, ct_case().uids, now=FIXED_TIME)
    calls = {"save_as": 0, "write_result": 0}
    counted = "save_as"
    original = pydicom.filewriter.correct_ambiguous_vr

    def counting(*args, **kwargs):
        calls[counted] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(pydicom.filewriter, "correct_ambiguous_vr", counting)
    seg.save_as(BytesIO(), enforce_file_format=True)
    counted = "write_result"
    write_result(build_segmentation(ct_case().content.findings, ct_case().uids, now=FIXED_TIME), BytesIO())
    datasets = 1 + sum(1 for _ in _nested(seg))
    # once per dataset of the tree (one recursive pass) and the file meta; save_as repeats it at every depth
    assert calls["write_result"] <= datasets + 2
    assert calls["save_as"] > 2 * datasets


def _nested(dataset):
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                yield item
                yield from _nested(item)


def test_write_result_needs_the_file_meta_highdicom_gives():
    with pytest.raises(ValueError, match="Transfer Syntax UID"):
        write_result(pydicom.Dataset(), BytesIO())
