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
    {"Modality": "MR", "SeriesDescription": "AX T1 POST GD"},
    {"Modality": "MR", "SeriesDescription": "AX T1 SE"},
    {"Modality": "MR", "SeriesDescription": "AX T2 TSE"},
    {"Modality": "MR", "SeriesDescription": "AX T2 FLAIR"},
]


def test_default_rules_route_the_three_study_types():
    rules = default_rules()
    assert route_study(rules, study({"Modality": "DX", "ViewPosition": "PA"})).rule.expert == "CXR"
    ct = route_study(rules, study({"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}))
    assert (ct.rule.expert, ct.rule.argument) == ("VISTA3D", "everything")
    brain = route_study(rules, study(*BRAIN))
    assert brain.rule.expert == "BRATS"
    assert brain.matched_series == {"T1c": "1.2.3.1", "T1": "1.2.3.2", "T2": "1.2.3.3", "FLAIR": "1.2.3.4"}


def test_brain_mri_without_flair_is_skipped_with_the_reason():
    decision = route_study(default_rules(), study(*BRAIN[:3]))
    assert decision.rule is None
    assert "required series 'FLAIR' not found" in decision.skipped_reason


def test_a_ct_made_only_of_localizers_is_not_routed_to_vista3d():
    decision = route_study(default_rules(), study({"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\LOCALIZER"}))
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
