"""The report stage gives the SEG writer the legend of the overlay the model saw (its display colours follow it)."""

from __future__ import annotations

import json

from service.pipeline.contracts import Consultations
from service.pipeline.contracts.consultations import VlmIdentity
from service.pipeline.work.report import overlay_legend


def _consultations(tmp_path, records: list[dict]) -> Consultations:
    path = tmp_path / "transcripts.json"
    path.write_text(json.dumps(records))
    return Consultations(transcripts=str(path), questions=["q"], answers=["a"], outcomes=["answered"],
                         model=VlmIdentity(name="VILA-M3-8B", version="1", backend="fake", weights_digest="",
                                           demo=False), model_s=0.0)


def test_the_first_legend_drawn_for_the_routes_expert_is_the_one_the_seg_follows(tmp_path):
    vlm = _consultations(tmp_path, [
        {"expert_call": None},
        {"expert_call": {"expert": "CXR", "overlay_legend": None}},
        {"expert_call": {"expert": "VISTA3D", "overlay_legend": [["red", "liver"], ["green", "hepatic tumor"], "x"]}},
        {"expert_call": {"expert": "VISTA3D", "overlay_legend": [["blue", "liver"]]}},
    ])
    assert overlay_legend(vlm, "VISTA3D") == ([["red", "liver"], ["green", "hepatic tumor"]], None)
    assert overlay_legend(vlm, "BRATS") == (None, None)


def test_brats_legends_name_labels_by_the_names_the_agent_draws_them_with(tmp_path):
    vlm = _consultations(tmp_path, [{"expert_call": {"expert": "BRATS",
                                                     "overlay_legend": [["red", "necrotic tumor core"]]}}])
    legend, names = overlay_legend(vlm, "BRATS")
    assert legend == [["red", "necrotic tumor core"]] and names[1] == "necrotic tumor core" and set(names) == {1, 2, 4}
