"""The expert networks at the sizes they run at (random weights), or tiny ones for the dry run.

Architectures as the protocol's experts ship them: VISTA3D (``vista3d132``, encoder width 48, 128^3 windows, a
few label prompts), the BraTS bundle's SegResNet (blocks_down 1,2,2,4, 16 filters, 4 -> 3 channels, 240x240x160
windows), and the TorchXRayVision CXR classifiers as DenseNet-121 (224^2) and ResNet-50 (512^2), 1 -> 18.
Each comes with an input of realistic content and a way to read its output as labels (segmentation) or as
yes/no decisions (classification), which is what parity is judged on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ExpertNetwork", "expert_networks", "calibrate_batch_norm", "VISTA3D_PROMPTS"]

VISTA3D_PROMPTS = (1, 3, 5, 14)  # liver, spleen, kidney, ... (VISTA3D label ids)


@dataclass
class ExpertNetwork:
    name: str
    kind: str  # "segmentation" | "classification"
    build: Callable[[], torch.nn.Module]  # seeded: every call gives the same weights
    example: Callable[[], torch.Tensor]  # seeded input of realistic content
    decide: Callable[[torch.Tensor], np.ndarray]  # output -> labels (segmentation) or 0/1 per class
    labels: tuple[int, ...] = ()  # segmentation labels Dice is reported for
    parity_example: Callable[[], torch.Tensor] | None = None  # a smaller input for parity (the CPU reference is slow)
    cuda_graph_obstacle: str = ""  # why the forward cannot be captured in a CUDA graph, where it cannot


class _Vista3DWithPrompts(torch.nn.Module):
    """What runs per sliding window: image + label prompts -> (1, prompts, X, Y, Z) logits."""

    def __init__(self, network: torch.nn.Module, prompts: tuple[int, ...]) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("class_vector", torch.tensor(prompts, dtype=torch.long).unsqueeze(1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network(image, class_vector=self.class_vector, transpose=True)


class _Scores(torch.nn.Module):
    """TorchXRayVision's contract: (B, 1, R, R) in [-1024, 1024] -> sigmoid scores (B, 18)."""

    def __init__(self, body: torch.nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(image / 1024.0))


def _seeded(seed: int, make: Callable[[], torch.nn.Module]) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        torch.manual_seed(seed)
        return make().eval()
    return build


def _vista3d_labels(logits: torch.Tensor) -> np.ndarray:
    logits = logits[0].float().cpu()
    ids = torch.tensor(VISTA3D_PROMPTS, dtype=torch.int16)
    labels = ids[logits.argmax(dim=0)]
    labels[torch.all(logits <= 0, dim=0)] = 0
    return labels.numpy()


def _brats_labels(logits: torch.Tensor) -> np.ndarray:
    from engines.experts.brats import brats_labels_from_probabilities

    return brats_labels_from_probabilities(torch.sigmoid(logits[0].float()).cpu().numpy())


def _decisions(scores: torch.Tensor) -> np.ndarray:
    return (scores.float().cpu().numpy() > 0.5).astype(np.uint8)


def _ct_window(size: tuple[int, int, int]) -> Callable[[], torch.Tensor]:
    def make() -> torch.Tensor:
        generator = torch.Generator().manual_seed(1)
        grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, s) for s in size], indexing="ij"))
        body = (grid.pow(2).sum(0) < 0.8).float() * 0.45  # soft tissue in a body outline, 0..1 after the HU window
        organ = ((grid[0] - 0.2).pow(2) + grid[1].pow(2) + (grid[2] + 0.1).pow(2) < 0.1).float() * 0.1
        return (body + organ + 0.02 * torch.randn(size, generator=generator)).clamp(0, 1)[None, None]
    return make


def _mri_window(size: tuple[int, int, int]) -> Callable[[], torch.Tensor]:
    def make() -> torch.Tensor:
        generator = torch.Generator().manual_seed(2)
        return torch.randn((1, 4, *size), generator=generator)  # channel-wise normalised sequences
    return make


def _cxr_image(resolution: int) -> Callable[[], torch.Tensor]:
    def make() -> torch.Tensor:
        generator = torch.Generator().manual_seed(3)
        return (torch.rand((1, 1, resolution, resolution), generator=generator) * 2 - 1) * 1024
    return make


def expert_networks(tiny: bool) -> list[ExpertNetwork]:
    """The four networks at production size, or small enough for a CPU dry run in seconds."""
    from monai.networks.nets import DenseNet, DenseNet121, ResNet, SegResNet, vista3d132

    vista_window = (32, 32, 32) if tiny else (128, 128, 128)
    brats_window = (16, 16, 16) if tiny else (240, 240, 160)
    embed, filters = (8, 8) if tiny else (48, 16)
    if tiny:
        densenet = lambda: DenseNet(spatial_dims=2, in_channels=1, out_channels=18, init_features=8, growth_rate=4,  # noqa: E731
                                    block_config=(1, 1, 1, 1))
        resnet = lambda: ResNet("basic", [1, 1, 1, 1], [4, 8, 8, 8], spatial_dims=2, n_input_channels=1, num_classes=18)  # noqa: E731
        densenet_size, resnet_size = 64, 64
    else:
        densenet = lambda: DenseNet121(spatial_dims=2, in_channels=1, out_channels=18)  # noqa: E731
        resnet = lambda: ResNet("bottleneck", [3, 4, 6, 3], [64, 128, 256, 512], spatial_dims=2, n_input_channels=1,  # noqa: E731
                                num_classes=18)
        densenet_size, resnet_size = 224, 512
    # Cheapest first: when the time budget runs short, the costly compiles are the ones skipped. VISTA3D last: if
    # capturing its CUDA graph fails, the networks before it are already measured.
    return [
        ExpertNetwork("cxr_densenet121", "classification", _seeded(12, lambda: _Scores(densenet())),
                      _cxr_image(densenet_size), _decisions),
        ExpertNetwork("cxr_resnet50", "classification", _seeded(13, lambda: _Scores(resnet())),
                      _cxr_image(resnet_size), _decisions),
        ExpertNetwork(
            "brats_segresnet", "segmentation",
            _seeded(11, lambda: SegResNet(blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], init_filters=filters,
                                          in_channels=4, out_channels=3)),
            _mri_window(brats_window), _brats_labels, labels=(1, 2, 4),
            parity_example=_mri_window(brats_window if tiny else (128, 128, 96)),
        ),
        ExpertNetwork(
            "vista3d", "segmentation",
            _seeded(10, lambda: _Vista3DWithPrompts(vista3d132(encoder_embed_dim=embed, in_channels=1), VISTA3D_PROMPTS)),
            _ct_window(vista_window), _vista3d_labels, labels=VISTA3D_PROMPTS,
            parity_example=_ct_window(vista_window if tiny else (96, 96, 96)),
            cuda_graph_obstacle="MONAI's VISTA3D.forward calls torch.cuda.empty_cache(), which capture does not allow",
        ),
    ]


@torch.no_grad()
def calibrate_batch_norm(network: torch.nn.Module, example: torch.Tensor, device: str, passes: int = 2) -> None:
    """Give BatchNorm layers running statistics from the input, as training would have: random weights with the
    default statistics (mean 0, variance 1) let activations grow through deep networks until fp16 overflows."""
    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    network.to(device).eval()
    for norm in norms:  # only BatchNorm learns statistics; instance/group norms stay as they are
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the calibration passes
        norm.train()
    generator = torch.Generator().manual_seed(4)
    for _ in range(passes):
        noise = 1 + 0.05 * torch.randn(example.shape, generator=generator)
        network((example * noise).to(device))
    network.eval()
