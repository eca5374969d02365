"""Finding the expert trigger in a model answer, as the reference parses it (VILA_M3_PROTOCOL.md section 4).

The reference takes every ``<...>`` span (regex ``<(.*?)>``); exactly one must be present; the expert is the one whose
name is a substring of it (``VISTA3D``, ``BRATS``, ``CXR``; case-sensitive); VISTA3D's argument is the text in the
parentheses after its name, empty or absent meaning ``everything``; an argument that is not a key of the label-group
file is an error. ``VISTA2D`` is in the model cards but has no expert: its answer is passed through. Where the
reference silently ignores a problem (two tags, an unknown name), :func:`parse_trigger` raises :class:`TriggerError`
with a :class:`TriggerProblem`, so the agent can record why it answered without an expert.

Three choices beyond the reference, all documented here: a tag naming two experts is refused as ambiguous (the
reference takes the first of CXR, VISTA3D, BRATS); a VISTA3D argument is stripped of surrounding blanks and one pair of
matching quotes (the model cards list the arguments quoted, e.g. ``'hepatic tumor'``) before it is looked up; and a
VISTA3D tag with an unbalanced parenthesis (``<VISTA3D(hepatic tumor>``) is refused as an invalid argument, where the
reference would silently segment ``everything``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Container
from dataclasses import dataclass

from engines.experts.base import ExpertName

__all__ = [
    "TriggerKind",
    "TriggerProblem",
    "TriggerError",
    "Trigger",
    "parse_trigger",
    "UNSERVED_EXPERT_NAMES",
    "VISTA3D_DEFAULT_ARGUMENT",
]

TAG_PATTERN = re.compile(r"<(.*?)>")  # the reference's pattern: no DOTALL, a tag never spans lines
ARGUMENT_PATTERN = re.compile(r"\((.*?)\)")
VISTA3D_DEFAULT_ARGUMENT = "everything"
UNSERVED_EXPERT_NAMES = ("VISTA2D",)  # listed in the model cards, no expert behind it
SEGMENTED_WORD = "segmented"  # an answer containing it gets the overlay and no second pass (segmentation experts only)
_SEGMENTATION_EXPERTS = (ExpertName.VISTA3D, ExpertName.BRATS)
# VISTA2D is tested before VISTA3D's name cannot match it ("VISTA3D" is not a substring of "VISTA2D"), so order is free.
_SERVED_NAMES = (ExpertName.VISTA3D, ExpertName.BRATS, ExpertName.CXR)


class TriggerKind(str, enum.Enum):
    NONE = "none"  # no <...> span: the answer is the model's own answer
    EXPERT = "expert"  # one of our experts was asked for
    UNSERVED = "unserved"  # VISTA2D: listed in the cards, no expert; the answer is passed through


class TriggerProblem(str, enum.Enum):
    MULTIPLE_TAGS = "multiple_tags"
    UNKNOWN_EXPERT = "unknown_expert"
    AMBIGUOUS_EXPERT = "ambiguous_expert"
    INVALID_ARGUMENT = "invalid_argument"


class TriggerError(ValueError):
    """The answer holds a trigger the agent cannot act on; ``problem`` says which kind, the message what was seen."""

    def __init__(self, problem: TriggerProblem, message: str, tags: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problem = TriggerProblem(problem)
        self.tags = tags


@dataclass(frozen=True)
class Trigger:
    kind: TriggerKind
    tag: str = ""  # the text between < and >, as the model wrote it
    expert: ExpertName | None = None
    argument: str | None = None  # VISTA3D's label group (normalised); None for BRATS and CXR
    raw_argument: str | None = None  # the text inside the parentheses as written; None when absent
    says_segmented: bool = False  # the answer contains "segmented" and the expert segments: no second pass


def parse_trigger(answer: str, vista3d_arguments: Container[str]) -> Trigger:
    """The one trigger in ``answer``; ``vista3d_arguments`` are the label-group keys (``everything`` included).

    Raises :class:`TriggerError` for two or more tags, a tag naming no known expert (or two), or a bad VISTA3D argument.
    """
    tags = tuple(TAG_PATTERN.findall(answer))
    if not tags:
        return Trigger(kind=TriggerKind.NONE)
    if len(tags) > 1:
        raise TriggerError(
            TriggerProblem.MULTIPLE_TAGS,
            f"the answer holds {len(tags)} <...> tags, exactly one is allowed: {list(tags)}",
            tags,
        )
    tag = tags[0]
    named = [name for name in _SERVED_NAMES if name.value in tag]
    if len(named) > 1:
        raise TriggerError(
            TriggerProblem.AMBIGUOUS_EXPERT,
            f"the tag <{tag}> names {len(named)} experts ({', '.join(n.value for n in named)}); it must name one",
            tags,
        )
    if not named:
        if any(name in tag for name in UNSERVED_EXPERT_NAMES):
            return Trigger(kind=TriggerKind.UNSERVED, tag=tag)
        raise TriggerError(
            TriggerProblem.UNKNOWN_EXPERT,
            f"the tag <{tag}> names no known expert (VISTA3D, BRATS or CXR)",
            tags,
        )
    expert = named[0]
    after_name = tag[tag.index(expert.value) + len(expert.value) :]
    arguments = ARGUMENT_PATTERN.findall(after_name)
    raw_argument = arguments[0] if len(arguments) == 1 else None
    argument = None
    if expert is ExpertName.VISTA3D:
        argument = _vista3d_argument(tag, after_name, arguments, vista3d_arguments)
    return Trigger(
        kind=TriggerKind.EXPERT,
        tag=tag,
        expert=expert,
        argument=argument,
        raw_argument=raw_argument,
        says_segmented=expert in _SEGMENTATION_EXPERTS and SEGMENTED_WORD in answer,
    )


def _normalise_argument(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].strip()
    return text


def _vista3d_argument(tag: str, after_name: str, arguments: list[str], valid: Container[str]) -> str:
    if not arguments and ("(" in after_name or ")" in after_name):
        raise TriggerError(
            TriggerProblem.INVALID_ARGUMENT,
            f"the tag <{tag}> has an unbalanced parenthesis: write <VISTA3D(label group)>",
            (tag,),
        )
    if len(arguments) > 1:
        raise TriggerError(
            TriggerProblem.INVALID_ARGUMENT,
            f"the tag <{tag}> gives VISTA3D {len(arguments)} arguments; it takes one label group",
            (tag,),
        )
    argument = _normalise_argument(arguments[0]) if arguments else ""
    if not argument:
        return VISTA3D_DEFAULT_ARGUMENT
    if argument not in valid:
        raise TriggerError(
            TriggerProblem.INVALID_ARGUMENT,
            f"the tag <{tag}> asks VISTA3D for {argument!r}, which is not a label group of vila_m3_label_groups.json",
            (tag,),
        )
    return argument
