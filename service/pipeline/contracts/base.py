"""What every stage result shares: a schema version, validation when written and when read, and a clear refusal.

A stage's result is a pydantic model (``StageContract``), stored as JSON on its ``stage_runs`` row with its
``schema_version``. It is validated twice:

- **written**: a stage builds its contract, which pydantic validates as it is made; ``Contract.written(result)``
  (the executor and the ledger call it for every contract a stage returns) checks it is that stage's contract and
  gives its JSON form (a plain dict of the same shape is validated the same way);
- **read**: ``Contract.of(claim)`` / ``Contract.read(raw)`` gives the model back. A result recorded by an older release
  (no ``schema_version``: version 0, the untyped dicts of releases before these contracts) is migrated to the current
  shape by the contract's ``_migrate``; one recorded by a newer release, or one that does not validate, is refused.

``ContractError`` is a ``PermanentStageError``: the run fails with its message (which stage, which version, which
field, and what to do: reprocess the study from that stage), never with a traceback. Messages name fields, never
their values, so no patient data reaches the run's error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from service.pipeline.stages import PermanentStageError, Stage

__all__ = ["ContractError", "StageContract", "Record", "describe_validation_error"]


class ContractError(PermanentStageError):
    """A stage result that does not satisfy its contract (written) or cannot be read by this release (read)."""


def describe_validation_error(error: ValidationError, limit: int = 4) -> str:
    """Which fields and why, without their values (no patient data in run errors)."""
    problems = error.errors(include_url=False, include_input=False, include_context=False)
    shown = [f"{'.'.join(str(part) for part in problem['loc']) or '(the result)'}: {problem['msg']}"
             for problem in problems[:limit]]
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(shown) + more


class Record(BaseModel):
    """A part of a stage result: immutable, and no field it does not know."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StageContract(Record):
    """One stage's result. Subclasses set ``STAGE`` and, when their shape changes, raise ``SCHEMA_VERSION`` and teach
    ``_migrate`` the step from the previous version."""

    STAGE: ClassVar[Stage]
    SCHEMA_VERSION: ClassVar[int] = 1

    schema_version: int = 1

    def model_post_init(self, context: Any) -> None:
        if self.schema_version != self.SCHEMA_VERSION:
            raise ValueError(f"schema_version must be {self.SCHEMA_VERSION} for a {type(self).__name__} written now")

    # -- written ------------------------------------------------------------------------------------------------

    def recorded(self) -> dict[str, Any]:
        """The JSON form kept on the stage's row."""
        return self.model_dump(mode="json")

    @classmethod
    def written(cls, result: StageContract | Mapping[str, Any]) -> dict[str, Any]:
        """``result`` checked against this contract, in the form kept on the stage's row; ``ContractError`` if not."""
        stage = cls.STAGE.value
        if isinstance(result, StageContract) and not isinstance(result, cls):
            raise ContractError(f"the {stage} stage returned a {type(result).__name__}, not a {cls.__name__}")
        if isinstance(result, cls):
            return result.recorded()
        if not isinstance(result, Mapping):
            raise ContractError(f"the {stage} stage returned a {type(result).__name__}, not a {cls.__name__}")
        try:
            return cls.model_validate({"schema_version": cls.SCHEMA_VERSION, **result}).recorded()
        except ValidationError as exc:
            raise ContractError(f"the {stage} stage produced a result its contract ({cls.__name__}) refuses: "
                                f"{describe_validation_error(exc)}") from None

    # -- read ---------------------------------------------------------------------------------------------------

    @classmethod
    def of(cls, claim) -> StageContract:
        """This stage's result among a claim's ``results`` (the stages already done in its run)."""
        return cls.read(claim.results.get(cls.STAGE.value))

    @classmethod
    def read(cls, raw: Mapping[str, Any] | None):
        """The recorded result as this contract; older versions migrated, newer or invalid ones refused."""
        stage = cls.STAGE.value
        if not raw:
            raise ContractError(f"the {stage} stage left no result in this run; reprocess the study from {stage}")
        version = raw.get("schema_version", 0)
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ContractError(f"the {stage} stage's recorded result has no valid schema_version "
                                f"({type(version).__name__}); reprocess the study from {stage}")
        if version > cls.SCHEMA_VERSION:
            raise ContractError(
                f"the {stage} stage's result was recorded by a newer release of m3edge (schema version {version}; "
                f"this release reads up to {cls.SCHEMA_VERSION}): finish the run with that release, or reprocess "
                f"the study from {stage}")
        shape = dict(raw) if version == cls.SCHEMA_VERSION else cls._migrate(dict(raw), version)
        try:
            return cls.model_validate({**shape, "schema_version": cls.SCHEMA_VERSION})
        except ValidationError as exc:
            raise ContractError(
                f"the {stage} stage's recorded result (schema version {version}) cannot be read as a {cls.__name__}: "
                f"{describe_validation_error(exc)}; reprocess the study from {stage}") from None

    @classmethod
    def _migrate(cls, raw: dict[str, Any], version: int) -> dict[str, Any]:
        """``raw`` (of ``version``) in the current shape. Version 0 (the untyped dicts of earlier releases) had the
        same keys, some of them absent: the fields this contract knows are kept and the defaults fill the rest;
        keys it no longer knows are dropped."""
        return {key: value for key, value in raw.items() if key in cls.model_fields and key != "schema_version"}
