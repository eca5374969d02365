"""UIDs under the organisation root, and the codes of structures, pathologies and procedures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydicom.sr._concepts_dict import concepts

from dicom_node.results import (
    OrganisationRoot,
    ResultKind,
    ResultUids,
    pathology_code,
    procedure_code,
    structure_coding,
)
from dicom_node.results.codes import ABSENT, KNOWN_STRUCTURES, LOCAL_SCHEME, PRESENT, local_code
from tests.support.result_cases import CXR_PATHOLOGIES

VISTA3D_LABELS = Path(__file__).parents[3] / "engines" / "protocol_data" / "vista3d_labels.json"
UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
# In DICOM PS3.16 CID 100 but not in pydicom's dictionary: checked by hand against the standard.
NOT_IN_PYDICOM = {("113091000", "SCT")}


def _pydicom_meanings(code) -> set[str]:
    return {
        meaning
        for entries in concepts.get(code.scheme_designator, {}).values()
        for value, (meaning, _) in entries.items()
        if value == code.value
    }


def test_uids_are_deterministic_valid_and_distinct_per_object():
    uids = ResultUids("1.2.3.4", "1.2.840.99.1", "run-1")
    again = ResultUids("1.2.3.4", "1.2.840.99.1", "run-1")
    other_run = ResultUids("1.2.3.4", "1.2.840.99.1", "run-2")
    made = {
        uids.series_uid(ResultKind.DRAFT_REPORT),
        uids.series_uid(ResultKind.SEGMENTATION),
        uids.instance_uid(ResultKind.DRAFT_REPORT),
        uids.instance_uid(ResultKind.VERIFIED_REPORT, revision=1),
        uids.instance_uid(ResultKind.VERIFIED_REPORT, revision=2),
        other_run.instance_uid(ResultKind.DRAFT_REPORT),
    }
    assert len(made) == 6
    assert uids.instance_uid("draft-report") == again.instance_uid(ResultKind.DRAFT_REPORT)
    for uid in made:
        assert uid.startswith("1.2.3.4.") and len(uid) <= 64 and UID.match(uid)


def test_device_uid_follows_the_weights_only():
    first = ResultUids("1.2.3.4", "1.2.840.99.1", "run-1")
    second = ResultUids("1.2.3.4", "1.2.840.99.2", "run-9")
    assert first.device_uid("sha256:aa") == second.device_uid("sha256:aa")
    assert first.device_uid("sha256:aa") != first.device_uid("sha256:ab")
    with pytest.raises(ValueError, match="weights_digest"):
        first.device_uid("")


@pytest.mark.parametrize(
    ("root", "message"),
    [("1.02.3", "not a UID root"), ("1.2.abc", "not a UID root"), ("1", "not a UID root"),
     ("1.2." + "1234567890." * 4, "at most 40")],
)
def test_organisation_root_refuses_invalid_roots(root, message):
    with pytest.raises(ValueError, match=message):
        OrganisationRoot(root)


def test_result_uids_need_study_and_run():
    with pytest.raises(ValueError, match="study_instance_uid"):
        ResultUids("1.2.3", "", "run")
    with pytest.raises(ValueError, match="run_id"):
        ResultUids("1.2.3", "1.2.3.4", "")


def test_every_snomed_code_we_use_is_in_dicom_ps3_16_with_that_meaning():
    used = [c.type for c in KNOWN_STRUCTURES.values()]
    used += [c.category for c in KNOWN_STRUCTURES.values()]
    used += [c.type_modifier for c in KNOWN_STRUCTURES.values() if c.type_modifier is not None]
    used += [c.anatomic_region for c in KNOWN_STRUCTURES.values() if c.anatomic_region is not None]
    used += [pathology_code(name) for name in CXR_PATHOLOGIES]
    used += [procedure_code(m) for m in ("CT", "MR", "DX", "CR", "PT")]
    used += [PRESENT, ABSENT]
    checked = 0
    for code in used:
        if code.scheme_designator == LOCAL_SCHEME or (code.value, code.scheme_designator) in NOT_IN_PYDICOM:
            continue
        assert code.meaning in _pydicom_meanings(code), f"{code} is not in PS3.16 with this meaning"
        checked += 1
    assert checked > 80


def test_every_vista3d_structure_has_a_coding_and_local_codes_are_unique_and_short():
    names = [n for i, n in json.loads(VISTA3D_LABELS.read_text())["channel_def"].items() if i != "0"]
    assert len(names) == 132
    codings = {name: structure_coding(name) for name in names}
    snomed = [n for n, c in codings.items() if not c.is_local]
    assert len(snomed) >= 68, "at least the common organs have SNOMED CT codes"
    for organ in ("liver", "spleen", "pancreas", "left kidney", "aorta", "stomach", "heart", "brain"):
        assert organ in snomed
    local = [c.type.value for c in codings.values() if c.is_local]
    assert len(local) == len(set(local)) and all(len(v) <= 16 for v in local)


def test_laterality_and_abnormal_structures_are_coded_as_such():
    left_kidney = structure_coding("left kidney")
    assert (left_kidney.type.value, left_kidney.type_modifier.meaning) == ("64033007", "Left")
    tumor = structure_coding("hepatic tumor")
    assert tumor.category.meaning == "Morphologically Abnormal Structure"
    assert (tumor.type.meaning, tumor.anatomic_region.meaning) == ("Neoplasm", "Liver")
    unknown = structure_coding("left rib 7")
    assert unknown.is_local and unknown.type.meaning == "left rib 7"
    assert structure_coding("TC") == structure_coding("tumor core")
    assert structure_coding("new growth nodule").category.meaning == "Morphologically Abnormal Structure"


def test_cxr_pathologies_use_snomed_where_known_and_local_codes_otherwise():
    assert pathology_code("Effusion").value == "60046008"
    assert pathology_code("Pleural_Thickening") == local_code("Pleural Thickening")
    assert pathology_code("Pleural_Thickening").scheme_designator == LOCAL_SCHEME
    assert len({pathology_code(n).value for n in CXR_PATHOLOGIES}) == 18


def test_procedure_reported_follows_the_modality():
    assert procedure_code("CT").meaning == "Computed tomography"
    assert procedure_code("mr").value == "113091000"
    assert procedure_code("US").meaning == "Imaging procedure"
    with pytest.raises(TypeError, match="modality"):
        procedure_code(None)
