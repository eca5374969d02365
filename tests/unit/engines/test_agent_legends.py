"""The overlay legend never contradicts the colours (issue 14, points 7 and 9).

BraTS: every subset of the tumour labels 1, 2, 4 on the shown slice gets a legend written from the labels drawn (the
training legend exactly when all three are), and each colour the legend names is the colour of the pixels of the label
it speaks of in the very image the model receives. The slice with all three labels is chosen when there is one.
VISTA3D: a shown slice without labels moves the overlay to a slice with labels; a result with none at all says so in
plain words. ScriptedModel and FixedLabelExpert are the test doubles of test_agent_doubles; images are the real renderer's.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from skimage.color import color_dict

from engines.agent import AgentSettings, ConsultationAgent, ConsultationRequest, Modality, Outcome
from engines.agent.prompts import BRATS_TRAINING_LEGEND, brats_legend_text
from engines.experts.base import ExpertInput, ExpertName
from tests.unit.engines.test_agent_doubles import IDENTITY, FixedLabelExpert, ScriptedModel, ct_study
from tests.unit.engines.test_agent_golden import CT_ANSWER_1

QUESTION = "What abnormality is seen in these images?"
GREY = 100.0  # every MRI voxel: the overlay's grey is uniform, so each label's pixels are one colour
REGIONS = {1: (slice(1, 3), slice(1, 3)), 2: (slice(4, 7), slice(1, 3)), 4: (slice(1, 3), slice(4, 7))}

# The legend for each subset of labels drawn, written by hand from the rule (colours go to the labels present in
# increasing order: red, blue, yellow).
EXPECTED_LEGENDS = {
    (1,): "all colors: whole tumor",
    (2,): "all colors: whole tumor",
    (4,): "only red: enhancing tumor, all colors: whole tumor",
    (1, 2): "all colors: whole tumor",
    (1, 4): "blue and red: tumor core, only blue: enhancing tumor, all colors: whole tumor",
    (2, 4): "only blue: enhancing tumor, all colors: whole tumor",
    (1, 2, 4): "yellow and red: tumor core, only yellow: enhancing tumor, all colors: whole tumor",
}


def _brats_volume(shape=(8, 8, 6)) -> np.ndarray:
    volume = np.full((4, *shape), GREY, dtype=np.float32)
    volume[:, 0, 0, :] = 0.0  # a darker corner, so min-max scaling keeps the rest at one grey level
    volume[:, 7, 7, :] = 200.0
    return volume


def _labels_on_slice(present, z=3, shape=(8, 8, 6)) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    for label in present:
        rows, columns = REGIONS[label]
        labels[rows, columns, z] = label
    return labels


def _consult(labels: np.ndarray, policy: str = "middle", volume: np.ndarray | None = None):
    volume = _brats_volume() if volume is None else volume
    request = ConsultationRequest(QUESTION, Modality.MRI, ExpertInput(volume, IDENTITY), brats_sequences=True)
    model = ScriptedModel("Let me first trigger <BRATS()>.", "final")
    expert = FixedLabelExpert(ExpertName.BRATS, labels)
    agent = ConsultationAgent(model, [expert], template="llama_3", settings=AgentSettings(slice_policy=policy))
    return agent.consult(request).transcript, model


def _legend_of(turn_2_text: str) -> str:
    return turn_2_text.split("describe\n", 1)[1].split("\nUse this result", 1)[0]


def _display(label_volume: np.ndarray, z: int) -> np.ndarray:
    return np.rot90(np.swapaxes(label_volume[:, :, z], 0, 1), 2)


def _pixel_colour_names(overlay: np.ndarray, label_slice: np.ndarray) -> dict[int, str]:
    """Which named colour each label's pixels are: 0.3 * colour + 0.7 * grey (label2rgb), truncated to uint8."""
    found = {}
    for label in (int(v) for v in np.unique(label_slice) if v):
        pixels = overlay[label_slice == label]
        assert (pixels == pixels[0]).all(), "one label, one colour"
        grey = int(GREY / 200.0 * 255) / 255  # min-max of 0..200 to 0..255, truncated to uint8
        matches = [name for name in ("red", "blue", "yellow") if
                   np.all(np.abs((0.3 * np.array(color_dict[name]) + 0.7 * grey) * 255 - pixels[0]) <= 2)]
        assert len(matches) == 1, (label, pixels[0], matches)
        found[label] = matches[0]
    return found


SUBSETS = [subset for size in (1, 2, 3) for subset in itertools.combinations((1, 2, 4), size)]


@pytest.mark.parametrize("present", SUBSETS, ids=lambda s: "+".join(map(str, s)))
def test_brats_legend_is_written_from_the_labels_drawn_and_names_their_true_colours(present):
    labels = _labels_on_slice(present)
    transcript, model = _consult(labels)

    assert transcript.outcome is Outcome.ANSWERED_WITH_EXPERT
    assert transcript.slice.index == 3  # the middle slice, where the labels are
    legend = _legend_of(model.user_texts(1)[1])
    assert legend == EXPECTED_LEGENDS[present]
    colours = _pixel_colour_names(model.conversations[1][2].images[0], _display(labels, 3))
    assert set(colours) == set(present)
    if 4 in present:  # "only <c>: enhancing tumor" names the colour of label 4's pixels
        assert f"only {colours[4]}: enhancing tumor" in legend
    if {1, 4} <= set(present):  # "<c4> and <c1>: tumor core"
        assert legend.startswith(f"{colours[4]} and {colours[1]}: tumor core")
    named = {word for word in ("red", "blue", "yellow") if word in legend}
    assert named <= set(colours.values()), "the legend names only colours that are drawn"


def test_all_three_labels_give_the_training_legend_byte_for_byte():
    assert brats_legend_text({1: "red", 2: "blue", 4: "yellow"}) == BRATS_TRAINING_LEGEND


def test_brats_legend_text_refuses_an_empty_slice():
    with pytest.raises(ValueError, match="no BraTS tumour label"):
        brats_legend_text({})


def test_most_structure_prefers_a_slice_holding_all_three_labels_over_a_bigger_one():
    labels = _labels_on_slice((1, 2, 4), z=4)
    labels[:, :, 2] = 2  # slice 2: edema only, but many more voxels
    ready = FixedLabelExpert(ExpertName.BRATS, labels).run(ExpertInput(_brats_volume(), IDENTITY))
    request = ConsultationRequest(QUESTION, Modality.MRI, ExpertInput(_brats_volume(), IDENTITY), brats_sequences=True,
                                  ready_results=(ready,))
    model = ScriptedModel("Let me first trigger <BRATS()>.", "final")
    agent = ConsultationAgent(model, [], template="llama_3", settings=AgentSettings(slice_policy="most_structure"))
    transcript = agent.consult(request).transcript
    assert transcript.slice.index == 4
    assert _legend_of(model.user_texts(1)[1]) == BRATS_TRAINING_LEGEND


def test_most_structure_without_any_slice_holding_all_three_takes_the_biggest():
    labels = _labels_on_slice((1, 4), z=4)
    labels[:, :, 2] = 2
    ready = FixedLabelExpert(ExpertName.BRATS, labels).run(ExpertInput(_brats_volume(), IDENTITY))
    request = ConsultationRequest(QUESTION, Modality.MRI, ExpertInput(_brats_volume(), IDENTITY), brats_sequences=True,
                                  ready_results=(ready,))
    model = ScriptedModel("Let me first trigger <BRATS()>.", "final")
    agent = ConsultationAgent(model, [], template="llama_3", settings=AgentSettings(slice_policy="most_structure"))
    assert agent.consult(request).transcript.slice.index == 2
    assert _legend_of(model.user_texts(1)[1]) == "all colors: whole tumor"


def test_brats_overlay_moves_to_a_slice_with_all_three_labels_when_the_shown_one_has_none():
    labels = _labels_on_slice((1, 2, 4), z=5)
    labels[0:2, 0:2, 1] = 2
    transcript, model = _consult(labels)  # middle policy: slice 3, which has no label
    assert transcript.slice.index == 3
    assert transcript.expert_call.overlay_slice == 5
    assert "slice 3 (the one the model saw) holds none of the BRATS labels" in transcript.expert_call.overlay_note
    assert transcript.turns[1].images[0].slice_index == 5
    assert _legend_of(model.user_texts(1)[1]) == BRATS_TRAINING_LEGEND


def test_brats_result_with_no_tumour_says_so_in_plain_words():
    transcript, model = _consult(np.zeros((8, 8, 6), dtype=np.uint8))
    assert model.user_texts(1)[1] == (
        "The results are <image>\n. There are no colors in this image: no brain tumor was found in this scan.\n"
        "Use this result to respond to this prompt:\nWhat abnormality is seen in these images?."
    )
    assert transcript.expert_call.overlay_legend == []
    assert "BRATS found nothing in this study" in transcript.expert_call.overlay_note


def _vista3d(labels: np.ndarray):
    volume, _ = ct_study()
    request = ConsultationRequest("Is there a hepatic tumor in this image?", Modality.CT, ExpertInput(volume, IDENTITY))
    model = ScriptedModel(CT_ANSWER_1, "final")
    expert = FixedLabelExpert(ExpertName.VISTA3D, labels, {1: "liver", 26: "hepatic tumor"})
    agent = ConsultationAgent(model, [expert], template="llama_3", settings=AgentSettings(slice_policy="middle"))
    return agent.consult(request).transcript, model


def test_vista3d_overlay_moves_to_the_slice_with_labels_when_the_shown_one_has_none():
    labels = np.zeros((8, 8, 6), dtype=np.uint8)
    labels[2:6, 2:6, 1] = 1
    labels[3:5, 3:5, 1] = 26
    transcript, model = _vista3d(labels)
    assert transcript.slice.index == 3
    assert transcript.expert_call.overlay_slice == 1
    assert transcript.expert_call.overlay_legend == [["red", "liver"], ["blue", "hepatic tumor"]]
    assert "describe red: liver, blue: hepatic tumor." in model.user_texts(1)[1]


def test_vista3d_result_with_nothing_found_says_so_instead_of_an_empty_legend():
    transcript, model = _vista3d(np.zeros((8, 8, 6), dtype=np.uint8))
    assert transcript.outcome is Outcome.ANSWERED_WITH_EXPERT
    assert model.user_texts(1)[1] == (
        "The results are <image>\n. There are no colors in this image: VISTA3D found no liver or hepatic tumor in this "
        "scan. Use this result to respond to this prompt:\nIs there a hepatic tumor in this image?."
    )
    assert "describe ." not in model.user_texts(1)[1]
    assert transcript.expert_call.overlay_legend == []
