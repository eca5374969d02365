"""Routing rules: validation with line numbers, missing-tag semantics, default rules, dry run."""

import pytest

from dicom_node.facts import SeriesFacts, StudyFacts
from service.routing import Priority, RoutingRulesError, default_rules, parse_rules, route_study


def study(*series_attributes, study_attributes=None, uid="1.2.3"):
    return StudyFacts(
        uid,
        study_attributes or {},
        tuple(SeriesFacts(f"{uid}.{n}", 10 + n, attrs) for n, attrs in enumerate(series_attributes, start=1)),
    )


BRAIN = [
    {"Modality": "MR", "SeriesDescription": "AX T1 POST GD", "BodyPartExamined": "BRAIN"},
    {"Modality": "MR", "SeriesDescription": "AX T1 SE", "BodyPartExamined": "BRAIN"},
    {"Modality": "MR", "SeriesDescription": "AX T2 TSE", "BodyPartExamined": "BRAIN"},
    {"Modality": "MR", "SeriesDescription": "AX T2 FLAIR", "BodyPartExamined": "BRAIN"},
]


def test_default_rules_route_the_three_study_types():
    rules = default_rules()
    assert route_study(rules, study({"Modality": "DX", "ViewPosition": "PA", "BodyPartExamined": "CHEST"})).rule.expert \
        == "CXR"
    ct = route_study(rules, study({"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL",
                                   "BodyPartExamined": "ABDOMEN"}))
    assert (ct.rule.expert, ct.rule.argument) == ("VISTA3D", "everything")
    brain = route_study(rules, study(*BRAIN))
    assert brain.rule.expert == "BRATS"
    assert brain.matched_series == {"T1c": "1.2.3.1", "T1": "1.2.3.2", "T2": "1.2.3.3", "FLAIR": "1.2.3.4"}


def test_brain_mri_without_flair_is_skipped_with_the_reason():
    decision = route_study(default_rules(), study(*BRAIN[:3]))
    assert decision.rule is None
    assert "required series 'FLAIR' not found" in decision.skipped_reason


# What real scanners and PACS send (values seen in pydicom's test data and vendor exports): none may get a draft.
NEGATIVES = {
    "tibia CR (pydicom's RG3_UNCR.dcm)": [{"Modality": "CR", "ViewPosition": "AP", "BodyPartExamined": "EXTREMITY",
                                           "StudyDescription": "Non-ossifying fibroma of distal tibia"}],
    "C-spine DX": [{"Modality": "DX", "ViewPosition": "AP", "BodyPartExamined": "CSPINE",
                    "SeriesDescription": "C-SPINE AP"}],
    "C-spine CR, no body part": [{"Modality": "CR", "ViewPosition": "AP", "SeriesDescription": "C-SPINE AP",
                                  "StudyDescription": "XR CERVICAL SPINE 2 VIEWS"}],
    "T-spine DX, no body part": [{"Modality": "DX", "ViewPosition": "AP", "SeriesDescription": "THORACIC SPINE AP",
                                  "StudyDescription": "XR THORACIC SPINE"}],
    "chest-labelled C-spine series": [{"Modality": "DX", "ViewPosition": "AP", "BodyPartExamined": "CHEST",
                                       "SeriesDescription": "C-spine AP"}],
    "head CT": [{"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL", "BodyPartExamined": "HEAD",
                 "SeriesDescription": "Head 5.0 H30s", "StudyDescription": "CT HEAD WO CONTRAST"}],
    "head CT, no body part": [{"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL",
                               "SeriesDescription": "Axial 5mm", "StudyDescription": "CT BRAIN"}],
    "CT without any anatomy": [{"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}],
    "knee MR": [{"Modality": "MR", "SeriesDescription": d, "BodyPartExamined": "KNEE"}
                for d in ("SAG T1", "SAG T1 POST GD", "COR T2 FS", "AX PD FLAIR")],
    "brain-sequence names on a spine MR": [{"Modality": "MR", "SeriesDescription": f"{d} L-spine"}
                                           for d in ("T1 post gd", "T1", "T2", "FLAIR")],
}

POSITIVES = {
    "chest CR PA": ([{"Modality": "CR", "ViewPosition": "PA", "BodyPartExamined": "CHEST"}], "CXR"),
    "chest DX AP, THORAX": ([{"Modality": "DX", "ViewPosition": "AP", "BodyPartExamined": "THORAX"}], "CXR"),
    "chest DX, no body part": ([{"Modality": "DX", "ViewPosition": "PA", "SeriesDescription": "CHEST PA"}], "CXR"),
    "chest/abdomen CT": ([{"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL",
                           "BodyPartExamined": "CHESTABDPELVIS"}], "VISTA3D"),
    "abdomen CT, vendor spelling": ([{"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL",
                                      "BodyPartExamined": "ABDOMEN_PELVIS"}], "VISTA3D"),
    "chest CT, no body part": ([{"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL",
                                 "SeriesDescription": "Lung 1.0 B70f", "StudyDescription": "CT CHEST W"}], "VISTA3D"),
    "four-sequence brain MR, HEAD": ([{**a, "BodyPartExamined": "HEAD"} for a in BRAIN], "BRATS"),
    "four-sequence brain MR, no body part": ([{k: v for k, v in a.items() if k != "BodyPartExamined"}
                                              | {"StudyDescription": "MRI BRAIN W/WO"} for a in BRAIN], "BRATS"),
}


@pytest.mark.parametrize("name", NEGATIVES)
def test_the_built_in_rules_take_no_study_without_evidence_of_their_anatomy(name):
    decision = route_study(default_rules(), study(*NEGATIVES[name]))
    assert decision.rule is None, decision.explain()
    assert "no routing rule matched" in decision.skipped_reason


@pytest.mark.parametrize("name", POSITIVES)
def test_the_built_in_rules_take_studies_that_show_their_anatomy(name):
    series, expert = POSITIVES[name]
    decision = route_study(default_rules(), study(*series))
    assert decision.rule is not None and decision.rule.expert == expert, decision.explain()


def test_the_skip_reason_says_which_anatomy_test_failed():
    tibia = route_study(default_rules(), study(*NEGATIVES["tibia CR (pydicom's RG3_UNCR.dcm)"]))
    assert "chest-xray: anatomy: no series shows chest (BodyPartExamined 'EXTREMITY' is not chest" \
        in tibia.skipped_reason
    spine = route_study(default_rules(), study(*NEGATIVES["T-spine DX, no body part"]))
    assert "SeriesDescription 'THORACIC SPINE AP' names another body part than chest" in spine.skipped_reason
    head = route_study(default_rules(), study(*NEGATIVES["head CT, no body part"]))
    assert "ct-vista3d: anatomy: no series shows torso (chest, abdomen or pelvis) (no evidence of torso" \
        in head.skipped_reason


def test_only_the_series_that_show_the_anatomy_are_eligible_for_prepare():
    decision = route_study(default_rules(), study(
        {"Modality": "CR", "ViewPosition": "AP", "BodyPartExamined": "EXTREMITY"},
        {"Modality": "DX", "ViewPosition": "PA", "BodyPartExamined": "CHEST"},
        {"Modality": "DX", "ViewPosition": "LL", "BodyPartExamined": "CHEST"},
    ))
    assert decision.rule.name == "chest-xray" and decision.eligible_series == ("1.2.3.2",)
    brain = route_study(default_rules(), study(*BRAIN))
    assert set(brain.eligible_series) == set(brain.matched_series.values())


def test_anatomy_rules_are_validated_and_may_stand_alone():
    text = """
version: 1
rules:
  - name: my-chest
    match:
      anatomy: {name: chest, body_parts: [CHEST, "PORT CHEST"], descriptions: 'chest|tórax'}
    expert: CXR
"""
    rules = parse_rules(text)
    assert route_study(rules, study({"Modality": "DX", "BodyPartExamined": "port_chest"})).rule.name == "my-chest"
    assert route_study(rules, study({"Modality": "DX", "StudyDescription": "RX TÓRAX"})).rule.name == "my-chest"
    with pytest.raises(RoutingRulesError, match=r"line 6: rules.0.match.anatomy.descriptions: pattern '\(' is not"):
        parse_rules(text.replace("'chest|tórax'", "'('"))
    with pytest.raises(RoutingRulesError, match="rules.0.match.anatomy.body_parts"):
        parse_rules(text.replace('[CHEST, "PORT CHEST"]', "[]"))


def test_a_ct_made_only_of_localizers_is_not_routed_to_vista3d():
    decision = route_study(default_rules(), study({"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\LOCALIZER",
                                                   "BodyPartExamined": "CHEST"}))
    assert decision.rule is None
    assert "LOCALIZER" in decision.skipped_reason


def test_missing_view_position_never_silently_matches():
    decision = route_study(default_rules(), study({"Modality": "DX"}))
    assert decision.rule is None
    assert "ViewPosition absent" in decision.skipped_reason


def test_missing_match_must_be_explicit():
    text = """
version: 1
rules:
  - name: any-dx
    match:
      any_series:
        Modality: DX
        ViewPosition: {one_of: [PA, AP], missing: match}
    expert: CXR
"""
    assert route_study(parse_rules(text), study({"Modality": "DX"})).rule.name == "any-dx"


def test_first_matching_rule_wins_and_explanation_lists_earlier_rules():
    text = """
version: 1
rules:
  - name: urgent-trauma
    priority: urgent
    match:
      study:
        StudyDescription: {pattern: 'trauma'}
      any_series: {Modality: CT}
    expert: VISTA3D
    argument: organs
    destinations: [TRAUMA@127.0.0.1:104]
  - name: ct
    match:
      any_series: {Modality: CT}
    expert: VISTA3D
"""
    rules = parse_rules(text)
    routine = route_study(rules, study({"Modality": "CT"}, study_attributes={"StudyDescription": "CT ABDOMEN"}))
    assert routine.rule.name == "ct"
    assert "StudyDescription 'CT ABDOMEN' fails ~ /trauma/i" in routine.explain()
    urgent = route_study(rules, study({"Modality": "CT"}, study_attributes={"StudyDescription": "CT TRAUMA WB"}))
    assert urgent.rule.priority is Priority.URGENT
    assert [str(d) for d in urgent.rule.destinations] == ["TRAUMA@127.0.0.1:104"]


def test_series_count_and_multi_valued_attributes():
    text = """
version: 1
rules:
  - name: small
    match:
      series_count: {min: 1, max: 2}
      any_series:
        ImageType: AXIAL
    expert: VISTA3D
"""
    rules = parse_rules(text)
    assert route_study(rules, study({"ImageType": "ORIGINAL\\PRIMARY\\AXIAL"})).rule is not None
    three = route_study(rules, study({}, {}, {"ImageType": "AXIAL"}))
    assert three.rule is None and "3 series, outside 1..2" in three.skipped_reason


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ("version: 1\nrules:\n  - name: x\n    match: {any_series: {Modality: CT}}\n    expert: VISTA4D\n",
         5, "rules.0.expert", "VISTA3D"),
        ("version: 1\nrules:\n  - name: x\n    match:\n      any_series:\n        PatientName: DOE\n    expert: CXR\n",
         5, "rules.0.match.any_series", "'PatientName' cannot be tested"),
        ("version: 1\nrules:\n  - name: x\n    match: {any_series: {Modality: CT}}\n    expert: VISTA3D\n"
         "    argument: liver tumour\n", 3, "rules.0", "argument 'liver tumour' is not one of"),
        ("version: 1\nrules:\n  - name: x\n    match:\n      any_series:\n        Modality: {pattern: '(['}\n"
         "    expert: CXR\n", 6, "rules.0.match.any_series.Modality", "not a valid regular expression"),
        ("version: 1\nrules:\n  - name: x\n    match: {}\n    expert: CXR\n", 4, "rules.0.match", "must test something"),
        ("version: 1\nrules:\n  - name: x\n    match: {any_series: {Modality: CT}}\n    expert: CXR\n    evil: 1\n",
         6, "rules.0.evil", "Extra inputs"),
        ("version: 1\nrules:\n  - name: x\n    match: {any_series: {Modality: CT}}\n    expert: CXR\n"
         "    destinations: [PACS]\n", 6, "rules.0.destinations", "AE@host:port"),
        ("version: 1\nrules:\n  - name: a\n    match: {any_series: {Modality: CT}}\n    expert: CXR\n"
         "  - name: a\n    match: {any_series: {Modality: CT}}\n    expert: CXR\n", 1, "(document)", "unique"),
        ("version: 1\nrules: [\n", 3, "(syntax)", ""),
    ],
)
def test_invalid_rules_name_line_and_field(text, line, field, message):
    with pytest.raises(RoutingRulesError) as info:
        parse_rules(text, "rules.yaml")
    problems = info.value.problems
    assert any(p[0] == line and p[1] == field and message in p[2] for p in problems), problems
    assert "rules.yaml" in str(info.value)


def test_yaml_tags_that_build_objects_are_refused():
    with pytest.raises(RoutingRulesError, match="syntax"):
        parse_rules("version: 1\nrules: !!python/object/apply:os.system ['true']\n")


def _readme_example_rules() -> str:
    """The YAML example of the README's "Routing rules" section, as a reader would copy it."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme.split("## Routing rules", 1)[1].split("\n## ", 1)[0]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_the_readmes_example_rules_parse_and_route_as_the_readme_says():
    rules = parse_rules(_readme_example_rules())
    assert all(rule.match.anatomy is not None for rule in rules.rules)  # "keep an anatomy in every rule you write"
    er = route_study(rules, study({"Modality": "DX", "ViewPosition": "AP", "BodyPartExamined": "PORT CHEST"},
                                  study_attributes={"StudyDescription": "ER trauma"}))
    assert er.rule.name == "chest-xray-urgent-er" and er.rule.priority is Priority.URGENT
    spine = route_study(rules, study({"Modality": "DX", "ViewPosition": "AP", "SeriesDescription": "C-spine AP"},
                                     study_attributes={"StudyDescription": "ER trauma"}))
    assert spine.rule is None, spine.explain()
    liver = route_study(rules, study({"Modality": "CT", "BodyPartExamined": "LIVER"}))
    assert (liver.rule.name, liver.rule.argument) == ("ct-liver", "hepatic tumor")
    head = route_study(rules, study({"Modality": "CT", "BodyPartExamined": "HEAD"}))
    assert head.rule is None, head.explain()
