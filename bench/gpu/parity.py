"""CUDA (autocast fp16) against CPU (fp32) for each expert network, same random weights and input."""

from __future__ import annotations

import copy
import time

import torch

from bench.gpu.agreement import decision_agreement, dice_per_label, numeric_difference
from bench.gpu.networks import ExpertNetwork, calibrate_batch_norm

__all__ = ["network_parity"]


def _forward(network: torch.nn.Module, example: torch.Tensor, device: str, amp_dtype: torch.dtype | None) -> torch.Tensor:
    with torch.inference_mode():
        if amp_dtype is None:
            return network(example.to(device)).float().cpu()
        with torch.autocast(device_type=device.split(":")[0], dtype=amp_dtype):
            return network(example.to(device)).float().cpu()


def network_parity(spec: ExpertNetwork, device: str, amp_dtype: torch.dtype, warmup: bool = True) -> dict:
    """The reference runs in fp32 on the CPU; the candidate on ``device`` under autocast ``amp_dtype``."""
    example = (spec.parity_example or spec.example)()
    network = spec.build()
    calibrate_batch_norm(network, example, device, passes=2 if warmup else 1)
    reference_network = copy.deepcopy(network).to("cpu").float()
    started = time.perf_counter()
    reference = _forward(reference_network, example, "cpu", None)
    cpu_s = time.perf_counter() - started
    del reference_network
    network.to(device)
    if warmup:
        _forward(network, example, device, amp_dtype)  # warm-up (cuDNN autotuning, lazy init)
    candidate = _forward(network, example, device, amp_dtype)
    result = {
        "network": spec.name,
        "input_shape": list(example.shape),
        "parameters_m": sum(p.numel() for p in network.parameters()) / 1e6,
        "candidate": f"{device} autocast {str(amp_dtype).removeprefix('torch.')}",
        "reference": "cpu float32",
        "cpu_forward_s": cpu_s,
        **numeric_difference(reference, candidate),
    }
    expected, got = spec.decide(reference), spec.decide(candidate)
    if spec.kind == "segmentation":
        result["dice_per_label"] = dice_per_label(expected, got, spec.labels)
        result["label_voxels_reference"] = {str(label): int((expected == label).sum()) for label in spec.labels}
    else:
        result["decision_agreement"] = decision_agreement(expected, got)
    network.to("cpu")
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result
