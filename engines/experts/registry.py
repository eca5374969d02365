"""The experts a worker has loaded: each loads once, on first use, and is reused until released.

Not a global: the worker builds one ``ExpertRegistry`` from its settings and passes it where experts are needed.
"""

from __future__ import annotations

import importlib
import logging
import threading
from pathlib import Path

from engines.backends import BackendKind, EngineCache, Precision
from engines.experts.base import Expert, ExpertName

__all__ = ["ExpertRegistry", "load_expert"]

logger = logging.getLogger(__name__)


class ExpertRegistry:
    def __init__(
        self,
        models_dir: Path,
        backend: BackendKind | str = BackendKind.AUTO,
        engines_dir: Path | None = None,
        precision: Precision | str = Precision.FP16,
    ) -> None:
        from engines.model_store.layout import ModelsDirectory

        self.models = ModelsDirectory(Path(models_dir))
        self.backend = BackendKind(backend)
        self.engine_cache = EngineCache(Path(engines_dir)) if engines_dir is not None else None
        self.precision = Precision(precision)
        self._loaded: dict[ExpertName, Expert] = {}
        self._lock = threading.Lock()

    def get(self, name: ExpertName | str) -> Expert:
        """The loaded expert, loading it on first use."""
        name = ExpertName(name)
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = self._load(name)
            return self._loaded[name]

    def loaded(self) -> list[ExpertName]:
        return list(self._loaded)

    def release(self, name: ExpertName | str | None = None) -> None:
        """Free one expert's memory (or all of them); the next ``get`` loads it again."""
        with self._lock:
            names = list(self._loaded) if name is None else [ExpertName(name)]
            for each in names:
                expert = self._loaded.pop(each, None)
                if expert is not None:
                    expert.release()
                    logger.info("released expert %s", each.value)

    def _load(self, name: ExpertName) -> Expert:
        return load_expert(name, self.models.root, self.backend, self.engine_cache, self.precision)


#: Each expert's class (module, name): imported on first use, since each pulls in torch and MONAI.
_EXPERT_CLASSES = {
    ExpertName.VISTA3D: ("engines.experts.vista3d", "Vista3DExpert"),
    ExpertName.BRATS: ("engines.experts.brats", "BratsExpert"),
    ExpertName.CXR: ("engines.experts.cxr", "CxrExpert"),
}


def load_expert(name: ExpertName | str, models_dir: Path, backend: BackendKind | str = BackendKind.AUTO,
                engine_cache: EngineCache | None = None, precision: Precision | str = Precision.FP16) -> Expert:
    """The one way an expert is built: the class ``name`` says, from its folder under ``models_dir``
    (``ModelsDirectory``), on ``backend`` with TensorRT engines in ``engine_cache``."""
    from engines.model_store.layout import EXPERT_FOLDERS

    name = ExpertName(name)
    module, class_name = _EXPERT_CLASSES[name]
    expert_class = getattr(importlib.import_module(module), class_name)
    return expert_class(Path(models_dir) / EXPERT_FOLDERS[name.value], backend=BackendKind(backend),
                        engine_cache=engine_cache, precision=Precision(precision))
