"""What every stage handler of one worker process shares: settings, the database, the study's files, the folders a run
writes into, and the heavy things (expert registry, VILA-M3), each loaded once, on first use, and kept.

Stage results (``service.pipeline.contracts``) stay small JSON; arrays go to ``.npz`` files under
``HOME/work/<study>/run-<n>/`` (written atomically), and results name them by absolute path. Result objects (SR, SEG, SC) go under ``HOME/results/<study>/run-<n>/``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.private_files import write_atomically
from service.config import Settings
from service.db.models import Instance, PipelineRun, Series, Study
from service.db.session import session_scope
from engines.model_store.manifest import folder_digest
from service.pipeline.stages import PermanentStageError
from service.pipeline.time_limits import StageTimeLimits
from service.pipeline.work.vlm_loader import load_vlm

__all__ = ["StageResources", "StoredInstance", "write_atomically", "write_json", "save_arrays", "load_arrays"]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredInstance:
    series_uid: str
    sop_instance_uid: str
    path: Path  # absolute, in the spool


def save_arrays(path: Path, **arrays: np.ndarray) -> str:
    with write_atomically(path) as handle:
        np.savez(handle, **arrays)
    return str(path)


def load_arrays(path: str | Path, *names: str) -> dict[str, np.ndarray]:
    """The arrays saved in ``path``; only ``names`` when given (the others are not read: a CT volume is large)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in (names or data.files)}
    except FileNotFoundError as exc:
        raise PermanentStageError(f"{path} is gone (was HOME/work cleaned?); reprocess the study from the start") \
            from exc


class _Lazy:
    """A value made on first use, once, even when two threads ask at the same time."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._value: Any = None
        self._made = False
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if not self._made:
                self._value = self._make()
                self._made = True
            return self._value

    @property
    def made(self) -> bool:
        return self._made


class StageResources:
    def __init__(self, settings: Settings, session_factory: sessionmaker[Session],
                 vlm_factory: Callable[[], Any] | None = None,
                 experts_factory: Callable[[], Any] | None = None,
                 time_limits: StageTimeLimits | None = None) -> None:
        """``vlm_factory`` and ``experts_factory`` replace loading VILA-M3 and the expert registry from the settings;
        ``time_limits`` are the worker's (its ledger's), else those the settings give."""
        self.settings = settings
        self.time_limits = time_limits or StageTimeLimits.from_settings(settings)
        self.session_factory = session_factory
        self._experts = _Lazy(experts_factory or self._make_registry)
        self._vlm = _Lazy(vlm_factory or (lambda: load_vlm(settings)))
        self._digests: dict[Path, str] = {}

    # -- heavy things, once per process ---------------------------------------------------------------------------

    def _make_registry(self):
        from engines.experts import ExpertRegistry

        settings = self.settings
        LOGGER.info("expert registry: models in %s, backend %s", settings.models_dir, settings.predictor_backend.value)
        return ExpertRegistry(settings.models_dir, settings.predictor_backend.value, settings.engines_dir)

    @property
    def experts(self):
        return self._experts.get()

    @property
    def vlm(self):
        """The configured VILA-M3 backend (``vlm_loader.LoadedVlm``: model, template, identity)."""
        return self._vlm.get()

    def model_digest(self, folder: Path) -> str:
        if folder not in self._digests:
            self._digests[folder] = folder_digest(folder)
        return self._digests[folder]

    # -- the study and the run ------------------------------------------------------------------------------------

    def run_number(self, run_id: int) -> int:
        with session_scope(self.session_factory) as session:
            run = session.get(PipelineRun, run_id)
            if run is None:
                raise PermanentStageError(f"pipeline run {run_id} no longer exists")
            return run.run_number

    def work_dir(self, study_uid: str, run_id: int) -> Path:
        return self.settings.home.resolve() / "work" / study_uid / f"run-{self.run_number(run_id)}"

    def results_dir(self, study_uid: str, run_id: int) -> Path:
        return self.settings.results_dir.resolve() / study_uid / f"run-{self.run_number(run_id)}"

    def study_instances(self, study_uid: str) -> list[StoredInstance]:
        """Every instance kept for the study (second copies that conflicted are left out), in a stable order."""
        with session_scope(self.session_factory) as session:
            rows = session.execute(
                select(Series.series_uid, Instance.sop_instance_uid, Instance.path)
                .join(Instance, Instance.series_id == Series.id)
                .join(Study, Study.id == Series.study_id)
                .where(Study.study_uid == study_uid, Instance.conflict.is_(False), Instance.other_patient.is_(False))
                .order_by(Series.series_uid, Instance.path)
            ).all()
        spool = self.settings.spool_dir
        return [StoredInstance(series, sop, (spool / relative).resolve()) for series, sop, relative in rows]

    def series_files(self, study_uid: str) -> dict[str, list[Path]]:
        files: dict[str, list[Path]] = defaultdict(list)
        for instance in self.study_instances(study_uid):
            files[instance.series_uid].append(instance.path)
        if not files:
            raise PermanentStageError(f"study {study_uid} has no stored instances (was the spool cleaned?)")
        return dict(files)


def write_json(path: Path, content: Mapping[str, Any] | list) -> str:
    with write_atomically(path) as handle:
        handle.write(json.dumps(content, indent=1).encode())
    return str(path)
