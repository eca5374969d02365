"""The result objects, written to files, checked by the standard's own validators (dicom3tools, dcmtk).

dciodvfy: no errors in any object we write (the warnings we accept are listed, with why, in EXPECTED_WARNINGS);
dsrdump: parses every SR; dcentvfy: source instances, SEG, SC, SR and KO agree on patient and study.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_node.results import (
    Amendment,
    VerifyingObserver,
    build_draft_report,
    build_overlay_capture,
    build_retraction,
    build_segmentation,
    build_verified_report,
)
from tests.conftest import require_tool
from tests.support.result_cases import FIXED_TIME, ResultCase, brain_case, ct_case, cxr_case, nothing_found_case
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


def _all_results(case: ResultCase, folder: Path) -> dict[str, Path]:
    """Every object the writers make for a case: SEG (if any), overlay SC, draft SR, verified SR, retraction."""
    findings = case.content.findings
    written: dict[str, Path] = {}
    seg = None
    if findings.segmentation is not None:
        seg = build_segmentation(findings, case.uids, now=FIXED_TIME)
        written["seg"] = _write(folder, "seg", seg)
        middle = findings.source_images[len(findings.source_images) // 2]
        overlay = np.zeros((int(middle.Rows), int(middle.Columns), 3), dtype=np.uint8)
        overlay[..., 0] = 200
        sc = build_overlay_capture(overlay, middle, findings.algorithm, case.uids, now=FIXED_TIME)
        written["sc"] = _write(folder, "sc", sc)
    draft = build_draft_report(case.content, case.uids, segmentation=seg, now=FIXED_TIME)
    written["draft"] = _write(folder, "draft", draft)
    verified = build_verified_report(
        draft, REVIEWER, case.uids, amendment=Amendment("Amended narrative.", "Checked the volumes."), now=FIXED_TIME
    )
    written["verified"] = _write(folder, "verified", verified)
    retraction = build_retraction([draft, *([seg] if seg is not None else [])], REVIEWER, case.uids,
                                  explanation="Wrong series analysed", now=FIXED_TIME)
    written["retraction"] = _write(folder, "retraction", retraction)
    return written


_CASES = {"ct": ct_case, "brain": brain_case, "cxr": cxr_case, "ct-nothing-found": lambda: nothing_found_case("ct"),
          "brain-nothing-found": lambda: nothing_found_case("brain")}


@pytest.fixture(scope="module", params=list(_CASES))
def written_case(request, tmp_path_factory) -> tuple[list[Path], dict[str, Path]]:
    case = _CASES[request.param]()
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


def test_dsrdump_parses_draft_and_verified_reports(written_case):
    _, results = written_case
    draft = _run("dsrdump", results["draft"])
    assert draft.returncode == 0, draft.stderr
    assert re.search(r"Completion Flag\s*: PARTIAL", draft.stdout)
    assert re.search(r"Verification Flag\s*: UNVERIFIED", draft.stdout)
    assert '"Imaging Measurement Report"' in draft.stdout and '"AI draft statement"' in draft.stdout
    verified = _run("dsrdump", results["verified"])
    assert verified.returncode == 0, verified.stderr
    assert re.search(r"Completion Flag\s*: COMPLETE", verified.stdout)
    assert re.search(r"Verification Flag\s*: VERIFIED", verified.stdout)
    assert re.search(r"Verifying Observers\s*: .*Reader\^Rita, Test Hospital Radiology", verified.stdout)
    assert re.search(r"Predecessor Docs\s*: 1", verified.stdout)
    retraction = _run("dsrdump", results["retraction"])
    assert retraction.returncode == 0 and '"Rejected for Quality Reasons"' in retraction.stdout


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
