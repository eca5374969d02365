"""Every result object the pipeline and the review can write, checked by the standard's own validators.

For CT (single-frame, and pydicom's real Enhanced CT), brain MR and CXR, with and without findings, made with DEMO and with real weights, with a model answer and a
reader's text full of control characters (cleaned on the way, as the report stage and the review do): SEG, overlay
SC, draft SR, approved and amended verified SR (real weights only: DEMO drafts are never verified), rejection note.
dciodvfy: no error in any of them (the warnings we accept are listed, with why, in EXPECTED_WARNINGS); dsrdump: parses
every SR and the rejection note without an error or warning; dcentvfy: source instances and results agree on patient
and study.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.results import (
    Amendment,
    DraftReportContent,
    Narrative,
    VerifyingObserver,
    build_draft_report,
    build_overlay_capture,
    build_retraction,
    build_segmentation,
    build_verified_report,
    clean_text,
)
from tests.conftest import require_tool
from tests.support.result_cases import (
    FIXED_TIME,
    ResultCase,
    brain_case,
    ct_case,
    cxr_case,
    enhanced_ct_case,
    nothing_found_case,
)
from tests.support.source_study import write_datasets

# Warnings dciodvfy (dicom3tools) gives on what we write, each accepted for a reason:
EXPECTED_WARNINGS = (
    # The local coding scheme is declared in the Coding Scheme Identification Sequence; dciodvfy knows only its list.
    re.compile(r"Unrecognized defined term <99M3EDGE> for value 1 of attribute <Coding Scheme Designator>"),
    # IHE AIR's Device UID inside the Contributing Equipment Sequence is newer than dicom3tools' IOD tables; its
    # presence makes the object a "Standard Extended SOP Class" (allowed by PS3.4 B.1.3).
    re.compile(r"Attribute is not present in standard DICOM IOD - \(0x0018,0x1002\) UI Device UID"),
    re.compile(r"Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard Extended"),
    # Secondary Capture: General Series Laterality is Type 2C; the source has none, so it is sent empty (unknown).
    re.compile(r"is only permitted to be empty when actually unknown.*attribute <Laterality>"),
)
REVIEWER = VerifyingObserver("Reader^Rita", "Test Hospital Radiology")
_TOOL_ENV = {**os.environ, "TCP_NODELAY": "1"}


def _run(tool: str, *arguments: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_tool(tool), *map(str, arguments)], capture_output=True, text=True, timeout=60, env=_TOOL_ENV
    )


def _dciodvfy_findings(path: Path) -> tuple[list[str], list[str]]:
    result = _run("dciodvfy", path)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def _write(folder: Path, name: str, dataset: Dataset) -> Path:
    path = folder / f"{name}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


# What a model may answer (random demo weights produce any token): every control character, a lone surrogate aside.
RAW_MODEL_TEXT = "Findings:\tliver\x00 normal\x07.\r\nSecond line\x1b[0m with\x0b a C1\x85 control and DEL\x7f.\f"
RAW_READER_TEXT = "Checked\tthe volumes;\x08 spleen\x00 not seen."


def _with_model_text(case: ResultCase) -> DraftReportContent:
    """The case's content with the question and answer as the report stage passes them on: raw model text, cleaned."""
    content = case.content
    narrative = Narrative(clean_text("Describe\tthe image."), clean_text(RAW_MODEL_TEXT))
    return DraftReportContent(content.findings, narrative, content.model, institution_name=content.institution_name,
                              extra_algorithms=content.extra_algorithms)


def _all_results(case: ResultCase, folder: Path) -> dict[str, Path]:
    """Every object the pipeline and the review write for a case: SEG (if any), overlay SC, draft SR, and then, for
    real weights, the approved and the amended verified SR; the rejection note. A DEMO case's objects say DEMO."""
    content = _with_model_text(case)
    findings, demo = content.findings, content.demo
    written: dict[str, Path] = {}
    seg = None
    if findings.segmentation is not None:
        seg = build_segmentation(findings, case.uids, now=FIXED_TIME, demo_run=demo)
        written["seg"] = _write(folder, "seg", seg)
        middle = findings.source_images[len(findings.source_images) // 2]
        overlay = np.zeros((int(middle.Rows), int(middle.Columns), 3), dtype=np.uint8)
        overlay[..., 0] = 200
        frame = 1 if int(middle.get("NumberOfFrames", 1)) > 1 else None  # an enhanced source: its first frame
        sc = build_overlay_capture(overlay, middle, findings.algorithm, case.uids, now=FIXED_TIME, demo_run=demo,
                                   frame_number=frame)
        written["sc"] = _write(folder, "sc", sc)
    draft = build_draft_report(content, case.uids, segmentation=seg, now=FIXED_TIME)
    written["draft"] = _write(folder, "draft", draft)
    if not demo:
        approved = build_verified_report(draft, REVIEWER, case.uids, now=FIXED_TIME)
        written["verified"] = _write(folder, "verified", approved)
        amended = build_verified_report(approved, REVIEWER, case.uids, revision=2, now=FIXED_TIME, amendment=Amendment(
            clean_text(RAW_READER_TEXT), clean_text("Volumes\tchecked.")))
        written["amended"] = _write(folder, "amended", amended)
    retraction = build_retraction([draft, *([seg] if seg is not None else [])], REVIEWER, case.uids,
                                  explanation=clean_text("Wrong\tseries analysed\x00"), now=FIXED_TIME, demo=demo)
    written["retraction"] = _write(folder, "retraction", retraction)
    for name, path in written.items():
        marked = "DEMO" in str(pydicom.dcmread(path, stop_before_pixels=True).SeriesDescription)
        assert marked == demo, f"{name}: DEMO in its series description must say whether DEMO models ran"
    return written


_KINDS = {"ct": ct_case, "brain": brain_case, "cxr": cxr_case, "enhanced-ct": enhanced_ct_case,
          "ct-nothing-found": lambda demo: nothing_found_case("ct", demo=demo),
          "brain-nothing-found": lambda demo: nothing_found_case("brain", demo=demo)}
_CASES = {f"{kind}-{'demo' if demo else 'real'}": (make, demo) for kind, make in _KINDS.items() for demo in (True, False)}


@pytest.fixture(scope="module", params=list(_CASES))
def written_case(request, tmp_path_factory) -> tuple[list[Path], dict[str, Path]]:
    make, demo = _CASES[request.param]
    case = make(demo=demo)
    folder = tmp_path_factory.mktemp(request.param)
    sources = write_datasets(folder / "source", case.study.all_instances)
    return sources, _all_results(case, folder)


def test_every_written_object_passes_dciodvfy_without_errors(written_case):
    _, results = written_case
    for name, path in results.items():
        errors, warnings = _dciodvfy_findings(path)
        assert errors == [], f"dciodvfy errors in {name}: {errors}"
        unexpected = [w for w in warnings if not any(p.search(w) for p in EXPECTED_WARNINGS)]
        assert unexpected == [], f"new dciodvfy warnings in {name}: {unexpected}"


# dsrdump's accepted warnings, both about dcmtk's own limits: its VR checker cannot check UTF-8 text (our objects are
# UTF-8, ISO_IR 192), and it does not check the template constraints of a Key Object Selection (TID 2010).
DSRDUMP_ACCEPTED = ("W: The VR checker does not support this Specific Character Set: ISO_IR 192",
                    "W: Check for template constraints not yet supported")


def _dsrdump(path: Path) -> str:
    """dsrdump's rendering; any other error or warning it logs fails the test."""
    dump = _run("dsrdump", path)
    problems = [line for line in dump.stderr.splitlines()
                if line.startswith(("E:", "W:", "F:")) and line not in DSRDUMP_ACCEPTED]
    assert dump.returncode == 0 and problems == [], f"dsrdump on {path.name}: {dump.stderr}"
    return dump.stdout


def test_dsrdump_parses_every_sr_and_key_object_without_complaint(written_case):
    _, results = written_case
    draft = _dsrdump(results["draft"])
    assert re.search(r"Completion Flag\s*: PARTIAL", draft)
    assert re.search(r"Verification Flag\s*: UNVERIFIED", draft)
    assert '"Imaging Measurement Report"' in draft and '"AI draft statement"' in draft
    for name in ("verified", "amended"):
        if name not in results:  # a DEMO draft is never verified
            continue
        verified = _dsrdump(results[name])
        assert re.search(r"Completion Flag\s*: COMPLETE", verified)
        assert re.search(r"Verification Flag\s*: VERIFIED", verified)
        assert re.search(r"Verifying Observers\s*: .*Reader\^Rita, Test Hospital Radiology", verified)
        assert re.search(r"Predecessor Docs\s*: 1", verified)
    retraction = _dsrdump(results["retraction"])
    assert '"Rejected for Quality Reasons"' in retraction


def test_dcentvfy_finds_source_and_results_consistent(written_case):
    sources, results = written_case
    result = _run("dcentvfy", *sources, *results.values())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert [line for line in output.splitlines() if line.startswith("Error")] == []


def test_dcentvfy_would_catch_a_result_with_another_patient(tmp_path):
    case = cxr_case()
    sources = write_datasets(tmp_path / "source", case.study.all_instances)
    draft = build_draft_report(case.content, case.uids, now=FIXED_TIME)
    draft.PatientID = "SOMEONE-ELSE"
    result = _run("dcentvfy", *sources, _write(tmp_path, "draft", draft))
    assert "Error" in result.stdout + result.stderr


def test_dsrdump_shows_the_statement_of_a_draft_where_the_expert_found_nothing(tmp_path):
    case = nothing_found_case("ct")
    dump = _run("dsrdump", _write(tmp_path, "draft", build_draft_report(case.content, case.uids, now=FIXED_TIME)))
    assert dump.returncode == 0, dump.stderr
    assert '"Imaging Measurement Report"' in dump.stdout and '"Procedure reported"' in dump.stdout
    assert '"Imaging Measurements"' not in dump.stdout
    assert '<contains TEXT:(,,"Finding")="The expert model VISTA3D (v' in dump.stdout  # dsrdump shortens texts
