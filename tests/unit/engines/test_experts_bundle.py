"""Reading MONAI bundles: a config shaped like the model zoo's (imports, expressions, references) builds its network
without running the bundle's imports; an arbitrary expression as network_def is refused."""

from __future__ import annotations

import json

import pytest
import torch

from engines.experts.bundle import BundleError, MonaiBundle


def _bundle(root, inference: dict, metadata: dict | None = None):
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata or {"version": "0.5.2"}))
    return MonaiBundle(root)


def test_a_model_zoo_shaped_brats_config_builds_the_bundle_network(tmp_path):
    bundle = _bundle(tmp_path / "brats_mri_segmentation", {
        "imports": ["$import glob", "$import scripts_that_do_not_exist_here"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "SegResNet", "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1],
                        "init_filters": 16, "in_channels": 4, "out_channels": 3, "dropout_prob": 0.2},
        "network": "$@network_def.to(@device)",
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [240, 240, 160], "sw_batch_size": 1, "overlap": 0.5},
    })  # fmt: skip
    network = bundle.build_network()
    assert type(network).__name__ == "SegResNet"
    assert network.init_filters == 16 and network.in_channels == 4
    torch.save({"model": network.state_dict()}, bundle.weights_path)  # CheckpointLoader's {"model": ...} form
    loaded = bundle.load_network()
    assert not loaded.training
    assert bundle.value("inferer", "roi_size") == [240, 240, 160]
    assert bundle.version == "0.5.2" and bundle.is_demo is False


def test_a_network_def_that_is_not_a_monai_constructor_is_refused(tmp_path):
    bundle = _bundle(tmp_path / "vista3d", {"network_def": "$__import__('os').getcwd()"})
    with pytest.raises(BundleError, match="is not a monai.networks.nets constructor; refusing to evaluate it"):
        bundle.build_network()


def test_a_folder_that_is_not_a_bundle_says_so(tmp_path):
    with pytest.raises(BundleError, match="is not a MONAI bundle"):
        MonaiBundle(tmp_path).value("patch_size")
