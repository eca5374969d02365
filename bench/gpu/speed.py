"""Expert network speed per window on the device: eager (autocast), ``torch.compile``, and a captured CUDA graph.

Each variant is timed as the median of ``repeats`` synchronised calls after warm-up; compile time is reported apart.
A variant that does not apply (CUDA graphs on the CPU, a forward with host-side control flow) is reported with why.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from bench.gpu.networks import ExpertNetwork, calibrate_batch_norm

__all__ = ["network_speed", "median_ms"]


def _synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_ms(call: Callable[[], object], device: str, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        call()
    _synchronise(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        _synchronise(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def _cuda_graph(network: torch.nn.Module, example: torch.Tensor, amp_dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    static_input = example.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode(), torch.autocast("cuda", dtype=amp_dtype, cache_enabled=False):
        for _ in range(2):
            network(static_input)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.autocast("cuda", dtype=amp_dtype, cache_enabled=False), torch.cuda.graph(graph):
        static_output = network(static_input)

    def replay() -> torch.Tensor:
        graph.replay()
        return static_output

    return replay


def network_speed(spec: ExpertNetwork, device: str, amp_dtype: torch.dtype, repeats: int, compile_backend: str | None,
                  allow: Callable[[str], str | None], cuda_graphs: bool = True, eager: bool = True,
                  warmup: int = 1) -> dict:
    """``allow(step)`` returns None to go on, or the reason to skip that step (the time budget);
    ``compile_backend`` None: no compiled variant; ``cuda_graphs`` False: no captured variant; ``eager`` False: the
    eager variant is not timed (the caller has it already)."""
    example = spec.example().to(device)
    network = spec.build()
    calibrate_batch_norm(network, example, device, passes=1 + warmup)
    network.to(device)
    result: dict = {"network": spec.name, "input_shape": list(example.shape), "device": device,
                    "autocast": str(amp_dtype).removeprefix("torch.")}

    def eager_call() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device_type=device.split(":")[0], dtype=amp_dtype):
            return network(example)

    if eager:
        result["eager_ms"] = median_ms(eager_call, device, repeats, warmup)

    if not cuda_graphs:
        pass
    elif not device.startswith("cuda"):
        result["cuda_graph"] = "not applicable: CUDA graphs need a CUDA device"
    elif spec.cuda_graph_obstacle:
        result["cuda_graph"] = f"not applicable: {spec.cuda_graph_obstacle}"
    elif (reason := allow("cuda_graph")) is not None:
        result["cuda_graph"] = reason
    else:
        try:
            replay = _cuda_graph(network, example, amp_dtype)
            result["cuda_graph_ms"] = median_ms(replay, device, repeats, warmup)
            if "eager_ms" in result:
                result["cuda_graph_speedup"] = result["eager_ms"] / result["cuda_graph_ms"]
        except RuntimeError as exc:  # capture refuses synchronising or host-dependent operations (not applicable)
            result["cuda_graph"] = f"capture failed: {str(exc).splitlines()[0][:200]}"

    if compile_backend is None:
        pass
    elif (reason := allow("compile")) is not None:
        result["compile"] = reason
    else:
        try:
            compiled = torch.compile(network, backend=compile_backend)

            def compiled_call() -> torch.Tensor:
                with torch.inference_mode(), torch.autocast(device_type=device.split(":")[0], dtype=amp_dtype):
                    return compiled(example)

            started = time.perf_counter()
            compiled_call()
            _synchronise(device)
            result["compile_s"] = time.perf_counter() - started
            result["compile_backend"] = compile_backend
            result["compiled_ms"] = median_ms(compiled_call, device, repeats, warmup=0)
        except Exception as exc:  # the compiler's failures are many kinds; the run goes on and says which
            result["compile"] = f"failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
    network.to("cpu")
    del network, example
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result
