"""CXR ensemble on demo ONNX/torch.export files: backend parity, TorchXRayVision preprocessing, per-pathology means."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engines.experts.base import ExpertError, ExpertInput, ExpertName
from engines.experts.cxr import CxrExpert, ensemble_scores, preprocess_cxr, read_ensemble
from engines.experts.labels import CXR_MODEL_PATHOLOGIES, CXR_MODELS, CXR_PATHOLOGIES
from engines.model_store.demo import write_cxr_demo


@pytest.fixture(scope="module")
def ensemble_dir(tmp_path_factory):
    return write_cxr_demo(tmp_path_factory.mktemp("models") / "cxr")


@pytest.fixture(scope="module")
def experts(ensemble_dir):
    return {backend: CxrExpert(ensemble_dir, backend=backend) for backend in ("torch", "onnxruntime")}


def _radiograph() -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.integers(0, 256, size=(300, 260), dtype=np.uint8)


def test_pathologies_are_torchxrayvision_default_pathologies():
    assert len(CXR_PATHOLOGIES) == 18
    assert CXR_PATHOLOGIES[0] == "Atelectasis" and CXR_PATHOLOGIES[-1] == "Enlarged Cardiomediastinum"
    assert "Pleural_Thickening" in CXR_PATHOLOGIES and "Lung Lesion" in CXR_PATHOLOGIES


def test_the_ensemble_file_records_eight_models_with_their_pathologies(ensemble_dir):
    ensemble, entries = read_ensemble(ensemble_dir)
    assert [entry.name for entry in entries] == list(CXR_MODELS)
    assert {entry.resolution for entry in entries} == {224, 512}
    assert all(entry.pathologies == CXR_MODEL_PATHOLOGIES[entry.name] for entry in entries)
    assert ensemble["demo"] is True
    assert json.loads((ensemble_dir / "ensemble.json").read_text())["pathology_groups"]["Pneumothorax"] == ["resnet50-res512-all"]


def test_onnxruntime_matches_torch_within_1e_4_for_every_model(experts):
    images = preprocess_cxr(_radiograph(), {224, 512})
    for name, choice in experts["torch"].choices.items():
        image = images[512 if name.startswith("resnet") else 224]
        expected = choice.predictor({"image": image})["scores"]
        actual = experts["onnxruntime"].choices[name].predictor({"image": image})["scores"]
        assert actual.shape == (1, 18)
        assert torch.allclose(actual, expected, atol=1e-4), name


def test_both_backends_give_18_scores_and_record_what_ran(experts):
    results = {backend: expert.run(ExpertInput(_radiograph())) for backend, expert in experts.items()}
    assert list(results["torch"].scores) == list(CXR_PATHOLOGIES)
    for pathology, score in results["torch"].scores.items():
        assert results["onnxruntime"].scores[pathology] == pytest.approx(score, abs=1e-4)
        assert 0.0 <= score <= 1.0
    for backend, result in results.items():
        assert result.expert is ExpertName.CXR
        assert result.backend == f"{backend}-cpu"
        assert result.demo is True
        assert result.model_version.startswith("torchxrayvision ensemble demo+")
        assert result.label_volume is None


def test_preprocessing_scales_crops_the_centre_and_resizes():
    image = np.zeros((100, 160), np.uint8)
    image[:, 30:130] = 255  # the centre 100 x 100 square is white, the sides black
    resized = preprocess_cxr(image, {100, 50})
    assert resized[100].shape == (1, 1, 100, 100)
    assert torch.all(resized[100] == 1024.0)
    assert resized[50].shape == (1, 1, 50, 50)
    assert torch.allclose(resized[50], torch.full((1, 1, 50, 50), 1024.0))
    colour = np.stack([np.zeros((64, 64), np.uint8), np.full((64, 64), 255, np.uint8), np.full((64, 64), 255, np.uint8)], -1)
    assert torch.all(preprocess_cxr(colour, {64})[64] == -1024.0), "the first channel is used"


def test_preprocessing_refuses_what_is_not_8_bit():
    with pytest.raises(ValueError, match="8-bit"):
        preprocess_cxr(np.zeros((64, 64), np.uint16), {224})


def test_scores_are_means_over_the_models_of_each_pathology_subset(ensemble_dir):
    _ensemble, entries = read_ensemble(ensemble_dir)
    per_model = {entry.name: np.full(18, float(index)) for index, entry in enumerate(entries)}  # model i scores i
    index = {name: i for i, name in enumerate(CXR_MODELS)}
    groups = json.loads((ensemble_dir / "ensemble.json").read_text())["pathology_groups"]
    scores = ensemble_scores(per_model, entries, groups)
    assert scores["Pneumothorax"] == index["resnet50-res512-all"]  # its subset is the ResNet alone
    # Fracture: subset all, nih, chex, resnet; nih does not predict it
    assert scores["Fracture"] == pytest.approx(np.mean([index[n] for n in ("densenet121-res224-all",
                                               "densenet121-res224-chex", "resnet50-res512-all")]))  # fmt: skip
    # Infiltration: no subset; every model that predicts it
    assert scores["Infiltration"] == pytest.approx(np.mean([index[n] for n in ("densenet121-res224-all",
                                                   "densenet121-res224-nih", "densenet121-res224-pc", "resnet50-res512-all")]))  # fmt: skip
    assert len(scores) == 18


def test_release_frees_the_predictors(ensemble_dir):
    expert = CxrExpert(ensemble_dir, backend="onnxruntime")
    expert.release()
    with pytest.raises(ExpertError, match="released"):
        expert.run(ExpertInput(_radiograph()))
