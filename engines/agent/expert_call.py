"""Getting the expert result a trigger asks for: a matching ready-made result, or the expert run under a timeout.

A ready-made result matches when it is from the same expert with the same argument (VISTA3D's label group; ``None``
for a VISTA3D result means ``everything``; BraTS and CXR take no argument). No subsetting: VISTA3D's ``everything``
set leaves out the tumour classes a tumour group asks for, so a result for another group is never reused. A ready-made
result may still be running (:class:`PendingExpertResult`: the service started the route's expert beside turn 1); the
agent then waits for it, as long as it would wait for the expert itself.

The expert runs in its own daemon thread; when it outlives the timeout the agent stops waiting and records it, and the
thread is abandoned (Python cannot stop it; a daemon thread never holds up the process's exit).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from engines.agent.transcript import ExpertResultSummary
from engines.agent.triggers import VISTA3D_DEFAULT_ARGUMENT
from engines.experts.base import Expert, ExpertError, ExpertInput, ExpertName, ExpertResult

__all__ = [
    "ExpertTimeout",
    "ExpertCrash",
    "PendingExpertResult",
    "ReadyResult",
    "result_key",
    "find_ready_result",
    "await_result",
    "run_expert",
    "summarise_result",
]

logger = logging.getLogger(__name__)


class ExpertTimeout(TimeoutError):
    """The expert did not finish within the agent's expert_timeout_s."""


class ExpertCrash(RuntimeError):
    """The expert raised something other than ExpertError/ValueError; the original is chained."""


@dataclass(frozen=True)
class PendingExpertResult:
    """An expert result still being computed: which expert and argument it will answer, and its future."""

    expert: ExpertName
    argument: str | None
    future: concurrent.futures.Future

    def __post_init__(self) -> None:
        object.__setattr__(self, "expert", ExpertName(self.expert))
        if not isinstance(self.future, concurrent.futures.Future):
            raise TypeError(f"future must be a concurrent.futures.Future, got {type(self.future).__name__}")


ReadyResult = ExpertResult | PendingExpertResult


def result_key(expert: ExpertName | str, argument: str | None) -> tuple[ExpertName, str | None]:
    expert = ExpertName(expert)
    if expert is ExpertName.VISTA3D:
        return expert, argument or VISTA3D_DEFAULT_ARGUMENT
    return expert, None


def find_ready_result(ready: Sequence[ReadyResult], expert: ExpertName, argument: str | None) -> ReadyResult | None:
    wanted = result_key(expert, argument)
    for result in ready:
        if result_key(result.expert, result.argument) == wanted:
            return result
    return None


def await_result(future: concurrent.futures.Future, what: str, timeout_s: float) -> ExpertResult:
    """The result of ``future`` within ``timeout_s``.

    Raises ExpertError or ValueError as the expert did, :class:`ExpertTimeout`, or :class:`ExpertCrash` for anything
    else (logged with its traceback: that is a bug in the expert, not a property of the study).
    """
    try:
        return future.result(timeout=timeout_s)
    except concurrent.futures.CancelledError:
        raise ExpertError(f"{what} was cancelled before it finished") from None
    except (ExpertError, ValueError):
        raise
    except Exception as error:  # the expert's own, re-raised here by the future
        if isinstance(error, TimeoutError) and not future.done():
            raise ExpertTimeout(f"{what} did not finish within {timeout_s:g} s (setting expert_timeout_s)") from None
        logger.error("%s raised an unexpected %s", what, type(error).__name__, exc_info=error)
        raise ExpertCrash(f"{what} raised {type(error).__name__}: {error}") from error


def run_expert(expert: Expert, inputs: ExpertInput, argument: str | None, timeout_s: float) -> ExpertResult:
    """``expert.run(inputs, argument)`` in a daemon thread, within ``timeout_s`` (errors as :func:`await_result`)."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_running_or_notify_cancel()

    def call() -> None:
        try:
            future.set_result(expert.run(inputs, argument))
        except Exception as error:  # carried to the waiting thread, which decides what it means
            future.set_exception(error)

    name = ExpertName(expert.name).value
    threading.Thread(target=call, name=f"expert-{name}", daemon=True).start()
    return await_result(future, f"expert {name}", timeout_s)


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
