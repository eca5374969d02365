"""Getting the expert result a trigger asks for: a matching ready-made result, or the expert run under a timeout.

A ready-made result matches when it is from the same expert with the same argument (VISTA3D's label group; ``None``
for a VISTA3D result means ``everything``; BraTS and CXR take no argument). No subsetting: VISTA3D's ``everything``
set leaves out the tumour classes a tumour group asks for, so a result for another group is never reused.

The expert runs in its own daemon thread; when it outlives the timeout the agent stops waiting and records it, and the
thread is abandoned (Python cannot stop it; a daemon thread never holds up the process's exit).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from engines.agent.transcript import ExpertResultSummary
from engines.agent.triggers import VISTA3D_DEFAULT_ARGUMENT
from engines.experts.base import Expert, ExpertError, ExpertInput, ExpertName, ExpertResult

__all__ = ["ExpertTimeout", "ExpertCrash", "result_key", "find_ready_result", "run_expert", "summarise_result"]

logger = logging.getLogger(__name__)


class ExpertTimeout(TimeoutError):
    """The expert did not finish within the agent's expert_timeout_s."""


class ExpertCrash(RuntimeError):
    """The expert raised something other than ExpertError/ValueError; the original is chained."""


@dataclass(frozen=True)
class _Outcome:
    result: ExpertResult | None = None
    error: BaseException | None = None


def result_key(expert: ExpertName | str, argument: str | None) -> tuple[ExpertName, str | None]:
    expert = ExpertName(expert)
    if expert is ExpertName.VISTA3D:
        return expert, argument or VISTA3D_DEFAULT_ARGUMENT
    return expert, None


def find_ready_result(
    ready: Sequence[ExpertResult], expert: ExpertName, argument: str | None
) -> ExpertResult | None:
    wanted = result_key(expert, argument)
    for result in ready:
        if result_key(result.expert, result.argument) == wanted:
            return result
    return None


def run_expert(expert: Expert, inputs: ExpertInput, argument: str | None, timeout_s: float) -> ExpertResult:
    """``expert.run(inputs, argument)`` within ``timeout_s``.

    Raises ExpertError or ValueError as the expert did, :class:`ExpertTimeout`, or :class:`ExpertCrash` for anything
    else (logged with its traceback: that is a bug in the expert, not a property of the study).
    """
    box: list[_Outcome] = []
    finished = threading.Event()

    def call() -> None:
        try:
            box.append(_Outcome(result=expert.run(inputs, argument)))
        except Exception as error:  # carried to the caller's thread, which decides what it means
            box.append(_Outcome(error=error))
        finally:
            finished.set()

    name = ExpertName(expert.name).value
    thread = threading.Thread(target=call, name=f"expert-{name}", daemon=True)
    thread.start()
    if not finished.wait(timeout_s):
        raise ExpertTimeout(f"expert {name} did not finish within {timeout_s:g} s (setting expert_timeout_s)")
    outcome = box[0]
    if outcome.error is None:
        return outcome.result
    if isinstance(outcome.error, (ExpertError, ValueError)):
        raise outcome.error
    logger.error("expert %s raised an unexpected %s", name, type(outcome.error).__name__, exc_info=outcome.error)
    raise ExpertCrash(f"expert {name} raised {type(outcome.error).__name__}: {outcome.error}") from outcome.error


def summarise_result(result: ExpertResult) -> ExpertResultSummary:
    return ExpertResultSummary(
        expert=ExpertName(result.expert).value,
        argument=result.argument,
        backend=result.backend,
        model_version=result.model_version,
        demo=bool(result.demo),
        label_names={str(int(label)): str(name) for label, name in result.label_names.items()},
        volumes_ml={str(name): float(value) for name, value in result.volumes_ml.items()},
        scores={str(name): float(value) for name, value in result.scores.items()},
        timings={str(name): float(value) for name, value in result.timings.items()},
        fallback_reason=result.fallback_reason,
    )
