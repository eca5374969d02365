"""The experts a worker has loaded: each loads once, on first use, and is reused until released.

Not a global: the worker builds one ``ExpertRegistry`` from its settings and passes it where experts are needed.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from engines.backends import BackendKind, EngineCache, Precision
from engines.experts.base import Expert, ExpertName

__all__ = ["ExpertRegistry"]

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
        options = {"backend": self.backend, "engine_cache": self.engine_cache, "precision": self.precision}
        if name is ExpertName.VISTA3D:
            from engines.experts.vista3d import Vista3DExpert

            return Vista3DExpert(self.models.vista3d, **options)
        if name is ExpertName.BRATS:
            from engines.experts.brats import BratsExpert

            return BratsExpert(self.models.brats, **options)
        from engines.experts.cxr import CxrExpert

        return CxrExpert(self.models.cxr, **options)
