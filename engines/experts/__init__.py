"""Expert models (VISTA3D, BraTS, CXR): arrays in, ``ExpertResult`` out. Heavy modules load on first use."""

from engines.experts.base import Expert, ExpertError, ExpertInput, ExpertName, ExpertResult
from engines.experts.registry import ExpertRegistry, load_expert

__all__ = ["Expert", "ExpertError", "ExpertInput", "ExpertName", "ExpertResult", "ExpertRegistry", "load_expert"]
