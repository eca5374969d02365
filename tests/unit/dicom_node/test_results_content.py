"""The writers' inputs refuse what would make an invalid object, naming the argument."""

from __future__ import annotations

import pytest

from dicom_node.results import (
    Amendment,
    ExpertFindings,
    Narrative,
    PathologyScore,
    VerifyingObserver,
    clean_line,
    clean_text,
)
from tests.support.result_cases import brain_case, ct_case, cxr_case


def test_findings_must_come_from_one_series_of_one_study():
    ct, brain = ct_case(), brain_case()
    algorithm = ct.content.findings.algorithm
    ct_images = ct.content.findings.source_images
    with pytest.raises(ValueError, match="one study"):
        ExpertFindings(algorithm, ct_images, ct.content.findings.segmentation,
                       other_evidence=tuple(brain.study.series["t1"]))
    with pytest.raises(ValueError, match="from one series"):
        ExpertFindings(algorithm, tuple(brain.study.series["t1"]) + tuple(brain.study.series["t2"]),
                       scores=(PathologyScore("Mass", 0.1),))
    with pytest.raises(ValueError, match="source_images"):
        ExpertFindings(algorithm, (), scores=(PathologyScore("Mass", 0.1),))


def test_findings_without_segmentation_or_scores_say_the_expert_found_nothing():
    ct = ct_case()
    findings = ct.content.findings
    nothing = ExpertFindings(findings.algorithm, findings.source_images)
    assert nothing.found_nothing and nothing.segmentation is None and nothing.scores == ()
    assert not findings.found_nothing and not cxr_case().content.findings.found_nothing


def test_scores_are_probabilities_and_half_means_present():
    assert PathologyScore("Effusion", 0.5).present and not PathologyScore("Effusion", 0.49).present
    with pytest.raises(ValueError, match="within 0..1"):
        PathologyScore("Effusion", 1.2)
    with pytest.raises(TypeError, match="score of 'Effusion' must be a number"):
        PathologyScore("Effusion", "high")


def test_narrative_is_text_and_demo_follows_any_algorithm():
    with pytest.raises(TypeError, match="answer must be a str"):
        Narrative("question", None)
    assert cxr_case(demo=True).content.demo and not brain_case(demo=False).content.demo


def test_text_keeps_only_the_control_characters_dicom_text_allows():
    raw = "a\tb\x0bc\r\nd\fe\x00f\x07g\x1b[0mh\x7fi\x85j\ud800k ü 肝"
    assert clean_text(raw) == "a b c\r\nd\fefg[0mhijk ü 肝"
    assert clean_line("Dr\tRita\nReader\\MD\x00") == "Dr Rita Reader/MD "


def test_result_content_refuses_text_with_control_characters_dicom_does_not_allow():
    with pytest.raises(ValueError, match=r"answer holds the control character U\+0009.*clean_text"):
        Narrative("What do you see?", "Lungs\tclear.")
    with pytest.raises(ValueError, match=r"narrative holds the control character U\+0000"):
        Amendment(narrative="Fine\x00")
    with pytest.raises(ValueError, match=r"name holds the control character U\+000A.*clean_line"):
        VerifyingObserver("Reader\nRita", "Hospital")
    assert Narrative("Q?", "Line one.\r\nLine two.\f").answer == "Line one.\r\nLine two.\f"


def test_a_readers_review_text_is_cleaned_before_it_reaches_dicom():
    from service.review import ReviewAction, ReviewRequest

    request = ReviewRequest(ReviewAction.AMEND, 1, narrative="Liver\tnormal.\x00", comment="Checked\x07.")
    assert (request.narrative, request.comment) == ("Liver normal.", "Checked.")
