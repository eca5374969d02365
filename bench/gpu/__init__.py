"""The GPU validation run behind ``bench/gpu_check.sh``: expert parity and speed, the VILA-M3-8B-shaped model, TensorRT.

``python -m bench.gpu --dry-run`` runs every part on the CPU with tiny shapes (what CI does, so the script cannot rot).
Nothing heavy is imported here: ``python -m bench.gpu`` imports torch and the engines when it runs.
"""

__all__: list[str] = []
