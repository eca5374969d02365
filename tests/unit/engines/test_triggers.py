"""Parsing the trigger out of a model answer (VILA_M3_PROTOCOL.md section 4)."""

from __future__ import annotations

import pytest

from engines.agent.prompts import load_label_groups
from engines.agent.triggers import TriggerError, TriggerKind, TriggerProblem, parse_trigger
from engines.experts.base import ExpertName

GROUPS = load_label_groups()


def test_vista3d_with_a_label_group():
    trigger = parse_trigger("This looks like a CT image. Let me trigger <VISTA3D(hepatic tumor)>.", GROUPS)
    assert trigger.kind is TriggerKind.EXPERT
    assert trigger.expert is ExpertName.VISTA3D
    assert trigger.argument == "hepatic tumor"
    assert trigger.raw_argument == "hepatic tumor"
    assert trigger.tag == "VISTA3D(hepatic tumor)"
    assert not trigger.says_segmented


@pytest.mark.parametrize("answer", ["Let me trigger <VISTA3D()>.", "Let me trigger <VISTA3D>.", "<VISTA3D(  )>"])
def test_vista3d_without_an_argument_means_everything(answer):
    assert parse_trigger(answer, GROUPS).argument == "everything"


def test_vista3d_argument_quoted_as_in_the_model_cards_is_accepted():
    trigger = parse_trigger("Let me trigger <VISTA3D('lung tumor')>.", GROUPS)
    assert trigger.argument == "lung tumor"
    assert trigger.raw_argument == "'lung tumor'"


def test_vista3d_accepts_every_key_of_the_label_group_file_even_one_not_in_the_cards():
    assert parse_trigger("<VISTA3D(hepatoma)>", GROUPS).argument == "hepatoma"


def test_vista3d_unknown_argument_is_an_invalid_argument():
    with pytest.raises(TriggerError, match="asks VISTA3D for 'liver', which is not a label group") as caught:
        parse_trigger("Let me trigger <VISTA3D(liver)>.", GROUPS)
    assert caught.value.problem is TriggerProblem.INVALID_ARGUMENT


@pytest.mark.parametrize("answer", ["Let me trigger <VISTA3D(hepatic tumor>.", "<VISTA3D hepatic tumor)>"])
def test_vista3d_with_an_unbalanced_parenthesis_is_an_invalid_argument_not_everything(answer):
    with pytest.raises(TriggerError, match="unbalanced parenthesis") as caught:
        parse_trigger(answer, GROUPS)
    assert caught.value.problem is TriggerProblem.INVALID_ARGUMENT


def test_vista3d_two_arguments_is_an_invalid_argument():
    with pytest.raises(TriggerError, match="gives VISTA3D 2 arguments") as caught:
        parse_trigger("<VISTA3D(organs)(skeleton)>", GROUPS)
    assert caught.value.problem is TriggerProblem.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("answer", "expert"),
    [
        ("This looks like an chest x-ray. Let me first trigger <CXR()>.", ExpertName.CXR),
        ("This looks like an MRI image sequence. Let me first trigger <BRATS()>.", ExpertName.BRATS),
        ("Let me trigger <BRATS(args)>.", ExpertName.BRATS),
    ],
)
def test_brats_and_cxr_take_no_argument(answer, expert):
    trigger = parse_trigger(answer, GROUPS)
    assert trigger.expert is expert
    assert trigger.argument is None


def test_no_tag_is_no_trigger():
    trigger = parse_trigger("The liver appears normal.", GROUPS)
    assert trigger.kind is TriggerKind.NONE
    assert trigger.expert is None


def test_two_tags_are_refused():
    with pytest.raises(TriggerError, match="2 <...> tags, exactly one is allowed") as caught:
        parse_trigger("Let me trigger <VISTA3D(organs)> and <CXR()>.", GROUPS)
    assert caught.value.problem is TriggerProblem.MULTIPLE_TAGS
    assert caught.value.tags == ("VISTA3D(organs)", "CXR()")


def test_a_repeated_tag_counts_twice_as_in_the_reference():
    with pytest.raises(TriggerError) as caught:
        parse_trigger("<CXR()> <CXR()>", GROUPS)
    assert caught.value.problem is TriggerProblem.MULTIPLE_TAGS


def test_unknown_expert_name_is_refused():
    with pytest.raises(TriggerError, match="names no known expert") as caught:
        parse_trigger("Let me trigger <TotalSegmentator(liver)>.", GROUPS)
    assert caught.value.problem is TriggerProblem.UNKNOWN_EXPERT


def test_expert_names_are_case_sensitive_like_the_reference():
    with pytest.raises(TriggerError) as caught:
        parse_trigger("Let me trigger <vista3d(organs)>.", GROUPS)
    assert caught.value.problem is TriggerProblem.UNKNOWN_EXPERT


def test_a_tag_naming_two_experts_is_ambiguous():
    with pytest.raises(TriggerError, match="names 2 experts") as caught:
        parse_trigger("<CXR or BRATS()>", GROUPS)
    assert caught.value.problem is TriggerProblem.AMBIGUOUS_EXPERT


def test_vista2d_is_listed_but_unserved():
    trigger = parse_trigger("This looks like a cell image. Let me trigger <VISTA2D()>.", GROUPS)
    assert trigger.kind is TriggerKind.UNSERVED
    assert trigger.expert is None
    assert trigger.tag == "VISTA2D()"


def test_expert_name_is_found_as_a_substring_of_the_tag():
    trigger = parse_trigger("Let me trigger <expert VISTA3D(organs)>.", GROUPS)
    assert trigger.expert is ExpertName.VISTA3D
    assert trigger.argument == "organs"


def test_a_tag_does_not_span_lines_as_in_the_reference():
    assert parse_trigger("Let me trigger <VISTA3D\n(organs)>.", GROUPS).kind is TriggerKind.NONE


@pytest.mark.parametrize(
    ("answer", "segmented"),
    [
        ("I segmented any brain tumors using <BRATS()>.", True),
        ("I segmented the organs using <VISTA3D(organs)>.", True),
        ("Let me trigger <VISTA3D(organs)>.", False),
        ("I segmented nothing, but let me check <CXR()>.", False),  # CXR is no segmentation: always a second pass
    ],
)
def test_segmented_applies_to_segmentation_experts(answer, segmented):
    assert parse_trigger(answer, GROUPS).says_segmented is segmented
