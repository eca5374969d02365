"""The models directory: manifests, `models import` with checksum verification, `pull` without internet, the
registry that loads each expert once, and the `m3edge models` / `m3edge engines` commands."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from engines.experts.base import ExpertError, ExpertInput, ExpertName
from engines.experts.registry import ExpertRegistry
from engines.model_store.cxr_ensemble import write_cxr_ensemble
from engines.model_store.demo import tiny_cxr_network, write_brats_demo
from engines.model_store.importer import ModelImportError, import_models
from engines.model_store.layout import ModelsDirectory
from engines.model_store.manifest import ManifestError, verify_manifest, write_manifest
from engines.model_store.pull import PullUnavailable, pull_models
from tests.support.ports import free_port

TWO_MODELS = ("densenet121-res224-all", "resnet50-res512-all")


@pytest.fixture(scope="module")
def cxr_source(tmp_path_factory):
    """A CXR folder as a preparation machine would hand it over (ONNX files, ensemble.json, manifest)."""
    from engines.experts.labels import CXR_MODEL_PATHOLOGIES, CXR_MODEL_RESOLUTION

    torch.manual_seed(0)
    source = tmp_path_factory.mktemp("source")
    write_cxr_ensemble(source / "cxr", {name: tiny_cxr_network(name) for name in TWO_MODELS},
                       resolutions=CXR_MODEL_RESOLUTION, pathologies=CXR_MODEL_PATHOLOGIES, groups={},
                       version="site-prepared", demo=False)  # fmt: skip
    return source


def test_import_verifies_and_installs_a_folder_of_models(cxr_source, tmp_path):
    models = tmp_path / "models"
    installed = import_models(cxr_source, models)
    assert installed == [models / "cxr"]
    verify_manifest(models / "cxr")
    listed = {model.folder: model for model in ModelsDirectory(models).installed()}
    assert listed["cxr"].demo is False
    assert listed["cxr"].version.startswith("site-prepared+")
    result = ExpertRegistry(models, backend="onnxruntime").get(ExpertName.CXR).run(
        ExpertInput(np.full((256, 256), 128, np.uint8))
    )
    assert result.backend == "onnxruntime-cpu" and result.demo is False
    assert "Pneumothorax" in result.scores  # the ResNet predicts it


def test_a_tampered_file_is_refused_and_the_installed_model_is_kept(cxr_source, tmp_path):
    models = tmp_path / "models"
    import_models(cxr_source, models)
    before = (models / "cxr" / "ensemble.json").read_bytes()
    tampered = tmp_path / "tampered"
    shutil.copytree(cxr_source, tampered)
    onnx_file = tampered / "cxr" / "densenet121-res224-all.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(ManifestError, match="checksum mismatch for densenet121-res224-all.onnx"):
        import_models(tampered, models)
    assert (models / "cxr" / "ensemble.json").read_bytes() == before
    assert not [path for path in models.iterdir() if path.name.startswith(".import-")]


def test_a_manifest_cannot_reach_outside_its_folder(tmp_path):
    folder = tmp_path / "cxr"
    folder.mkdir()
    (tmp_path / "secret").write_text("x")
    (folder / "manifest.json").write_text(json.dumps({"name": "cxr", "files": {"../secret": "0" * 64}}))
    with pytest.raises(ManifestError, match="outside the model folder"):
        verify_manifest(folder)


def test_a_folder_without_manifests_says_what_is_expected(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"...")
    with pytest.raises(ModelImportError, match="no manifest.json and no sub-folder with one"):
        import_models(tmp_path, tmp_path / "models")


def test_an_unknown_model_name_is_refused(tmp_path):
    folder = tmp_path / "mystery"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"1")
    write_manifest(folder, "mystery")
    with pytest.raises(ModelImportError, match="model name 'mystery' is not one of"):
        import_models(folder, tmp_path / "models")


def test_pull_without_internet_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr("engines.model_store.pull._PROBE", ("127.0.0.1", free_port()))  # nothing listens there
    with pytest.raises(PullUnavailable, match=r"needs the internet.*m3edge models import SRC"):
        pull_models(tmp_path / "models", timeout=1.0)
    assert not (tmp_path / "models").exists()


def test_the_registry_loads_once_and_reloads_after_release(tmp_path):
    models = ModelsDirectory(tmp_path / "models")
    write_brats_demo(models.brats, init_filters=8, roi_size=(16, 16, 16))
    registry = ExpertRegistry(models.root, backend="onnxruntime")
    first = registry.get("BRATS")
    assert registry.get(ExpertName.BRATS) is first
    assert registry.loaded() == [ExpertName.BRATS]
    registry.release()
    assert registry.loaded() == []
    with pytest.raises(ExpertError, match="released"):
        first.run(ExpertInput(np.zeros((4, 16, 16, 16), np.float32), np.eye(4)))
    assert registry.get(ExpertName.BRATS) is not first


def _cli(home, *args):
    env = {"M3EDGE_HOME": str(home), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", "from service.cli.main import main; main()", *args],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip


@pytest.mark.slow
def test_models_list_import_and_engines_build_commands(cxr_source, tmp_path):
    home = tmp_path / "home"
    empty = _cli(home, "models", "list")
    assert empty.returncode == 0 and "no models in" in empty.stdout
    imported = _cli(home, "models", "import", str(cxr_source))
    assert imported.returncode == 0, imported.stderr
    assert "installed cxr" in imported.stdout
    listed = _cli(home, "models", "list")
    assert "cxr" in listed.stdout and "site-prepared+" in listed.stdout
    build = _cli(home, "engines", "build")
    if importlib.util.find_spec("tensorrt") is None:
        assert build.returncode == 2
        assert "cannot build engines here: the tensorrt backend needs the tensorrt package" in build.stderr


def test_models_import_refuses_a_bad_checksum_with_exit_status_2(cxr_source, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(cxr_source, tampered)
    (tampered / "cxr" / "ensemble.json").write_text("{}")
    result = _cli(tmp_path / "home", "models", "import", str(tampered))
    assert result.returncode == 2
    assert "import refused: checksum mismatch for ensemble.json" in result.stderr


@pytest.mark.slow
def test_models_demo_writes_every_model_in_its_real_format(tmp_path):
    result = _cli(tmp_path, "models", "demo")
    assert result.returncode == 0, result.stderr
    models = ModelsDirectory(tmp_path / "models")
    for folder in (models.vista3d, models.brats):
        assert (folder / "configs" / "inference.json").is_file() and (folder / "models" / "model.pt").is_file()
        verify_manifest(folder)
    assert (models.vista3d / "models" / "image_encoder.encoder.onnx").is_file()
    assert (models.brats / "models" / "model.onnx").is_file()
    assert len(list(models.cxr.glob("*.onnx"))) == 8
    assert json.loads((models.vista3d / "configs" / "inference.json").read_text())["patch_size"] == [128, 128, 128]
    assert json.loads((models.brats / "configs" / "inference.json").read_text())["inferer"]["roi_size"] == [240, 240, 160]
    assert all(model.demo for model in models.installed())


def test_engines_build_builds_every_installed_network_and_list_shows_them(tmp_path, monkeypatch):
    """In-process, with the recording TensorRT stand-in (tests/support/tensorrt_standin) in place of TensorRT."""
    from typer.testing import CliRunner

    from engines.backends.tensorrt import TensorRTRuntime
    from engines.experts.labels import CXR_MODEL_PATHOLOGIES, CXR_MODEL_RESOLUTION
    from service.cli.main import app
    from tests.support.tensorrt_standin import install_standin

    models = ModelsDirectory(tmp_path / "models")
    write_brats_demo(models.brats, init_filters=8, roi_size=(16, 16, 16))
    name = "densenet121-res224-all"
    write_cxr_ensemble(models.cxr, {name: tiny_cxr_network(name)}, resolutions=CXR_MODEL_RESOLUTION,
                       pathologies=CXR_MODEL_PATHOLOGIES, groups={}, version="t", demo=True)  # fmt: skip
    standin = install_standin(monkeypatch, "10.9.0")
    monkeypatch.setattr(TensorRTRuntime, "detect", classmethod(lambda cls: cls(trt=standin, compute_capability="8.9")))
    monkeypatch.setenv("M3EDGE_HOME", str(tmp_path))
    runner = CliRunner()
    first = runner.invoke(app, ["engines", "build", "--precision", "fp16"])
    assert first.exit_code == 0, first.output
    assert "brats: built" in first.output and f"cxr.{name}: built" in first.output
    assert len([call for call in standin.calls if call[0] == "Builder.build_serialized_network"]) == 2
    again = runner.invoke(app, ["engines", "build"])
    assert "brats: cached" in again.output
    assert len([call for call in standin.calls if call[0] == "Builder.build_serialized_network"]) == 2
    listed = runner.invoke(app, ["models", "list"])
    assert "brats fp16 TRT 10.9.0 sm8.9" in listed.output
