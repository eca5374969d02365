"""Routing rules: declarative YAML (no evaluated code) that sends a study to an expert with questions.

A rule matches when every condition holds. Conditions test DICOM attributes of the study or of its series; an
attribute that is absent NEVER satisfies a test unless the condition says ``missing: match`` explicitly.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dicom_node.facts import ROUTING_ATTRIBUTES
from dicom_node.network import DicomAddress
from service.routing.document import load_located_yaml

__all__ = [
    "Anatomy",
    "AttributeTest",
    "MissingPolicy",
    "Priority",
    "RequiredSeries",
    "RoutingRule",
    "RuleSet",
    "RoutingRulesError",
    "load_rules",
    "parse_rules",
    "default_rules",
    "DEFAULT_QUESTION",
]

DEFAULT_QUESTION = "Describe the image in detail."  # what the VILA-M3 report evaluation used
EXPERTS = ("VISTA3D", "BRATS", "CXR")


class RoutingRulesError(ValueError):
    """The routing file is invalid; ``problems`` lists (line, field, message) so an operator can fix each one."""

    def __init__(self, source: str, problems: list[tuple[int | None, str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"  line {line if line is not None else '?'}: {field}: {message}" for line, field, message in problems]
        super().__init__(f"invalid routing rules in {source}:\n" + "\n".join(lines))


class MissingPolicy(str, enum.Enum):
    NO_MATCH = "no_match"  # the default: an absent attribute fails the test
    MATCH = "match"  # an absent attribute passes the test (say so explicitly)


class Priority(str, enum.Enum):
    URGENT = "urgent"
    ROUTINE = "routine"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AttributeTest(_Strict):
    """One test on one attribute: exactly one of ``equals``, ``one_of``, ``pattern`` (case-insensitive regex search)."""

    equals: str | None = None
    one_of: tuple[str, ...] | None = None
    pattern: str | None = None
    negate: bool = False
    missing: MissingPolicy = MissingPolicy.NO_MATCH

    @model_validator(mode="after")
    def _exactly_one(self) -> AttributeTest:
        given = [name for name in ("equals", "one_of", "pattern") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of equals, one_of, pattern")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a valid regular expression: {exc}") from None
        return self

    def explain(self) -> str:
        if self.equals is not None:
            text = f"== {self.equals!r}"
        elif self.one_of is not None:
            text = f"in {list(self.one_of)}"
        else:
            text = f"~ /{self.pattern}/i"
        return ("not " if self.negate else "") + text

    def test(self, value: str | None) -> bool:
        if value is None:
            return self.missing is MissingPolicy.MATCH
        values = value.split("\\") if self.equals is not None or self.one_of is not None else [value]
        if self.equals is not None:
            hit = any(v.strip().upper() == self.equals.upper() for v in values)
        elif self.one_of is not None:
            hit = any(v.strip().upper() in {o.upper() for o in self.one_of} for v in values)
        else:
            hit = re.search(self.pattern, value, flags=re.IGNORECASE) is not None
        return hit != self.negate


def _attribute_tests(value: Any) -> Any:
    """Allow the short forms ``Modality: CT`` and ``Modality: [CR, DX]``."""
    if not isinstance(value, dict):
        return value
    expanded = {}
    for keyword, test in value.items():
        if isinstance(test, str):
            test = {"equals": test}
        elif isinstance(test, list):
            test = {"one_of": test}
        expanded[keyword] = test
    return expanded


AttributeTests = dict[str, AttributeTest]


def _check_keywords(tests: dict[str, AttributeTest]) -> dict[str, AttributeTest]:
    for keyword in tests:
        if keyword not in ROUTING_ATTRIBUTES:
            raise ValueError(f"{keyword!r} cannot be tested; use one of {', '.join(ROUTING_ATTRIBUTES)}")
    return tests


class RequiredSeries(_Strict):
    """A series the study must contain (e.g. each of the four BraTS sequences)."""

    name: str = Field(min_length=1)
    where: AttributeTests

    _expand = field_validator("where", mode="before")(_attribute_tests)
    _keywords = field_validator("where")(_check_keywords)


def _body_part_key(value: str) -> str:
    """BodyPartExamined compared as scanners vary it: upper case, without spaces, '_' or '-' ('ABDOMEN_PELVIS')."""
    return re.sub(r"[\s_\-]+", "", value).upper()


# Where a study says what it shows when BodyPartExamined is absent, in the order they are tried.
DESCRIPTION_ATTRIBUTES = ("SeriesDescription", "ProtocolName", "StudyDescription")
_OWN_DESCRIPTIONS = ("SeriesDescription", "ProtocolName")  # the series' own: naming another part excludes it


class Anatomy(_Strict):
    """Positive evidence that a series shows the body part the expert was trained on.

    A series shows it when its BodyPartExamined is one of ``body_parts`` (compared without case, spaces, '_' or
    '-'); only where BodyPartExamined is absent (or empty) may a description stand in: the series' SeriesDescription,
    ProtocolName or the StudyDescription matching ``descriptions`` (a case-insensitive regular expression) and not
    ``other_parts``. Evidence of another body part always wins: a BodyPartExamined not in the list, or a series'
    own description matching ``other_parts``. No evidence at all is no match, never a guess.
    """

    name: str = Field(min_length=1, max_length=64)  # what the reasons call it: "chest", "brain", ...
    body_parts: tuple[str, ...] = Field(min_length=1)
    descriptions: str | None = None
    other_parts: str | None = None

    @field_validator("descriptions", "other_parts")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"pattern {value!r} is not a valid regular expression: {exc}") from None
        return value

    @field_validator("body_parts")
    @classmethod
    def _body_parts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not _body_part_key(v) for v in value):
            raise ValueError("body_parts must not hold an empty value")
        return value

    def _names_other_part(self, text: str) -> bool:
        return self.other_parts is not None and re.search(self.other_parts, text, flags=re.IGNORECASE) is not None

    def evidence(self, attributes: dict[str, str]) -> tuple[bool, str]:
        """(shows it, why): the reason names the attribute and value that decided, for dry runs and skip reasons."""
        for keyword in _OWN_DESCRIPTIONS:
            value = attributes.get(keyword)
            if value is not None and self._names_other_part(value):
                return False, f"{keyword} {value!r} names another body part than {self.name}"
        body_part = attributes.get("BodyPartExamined")
        if body_part is not None and _body_part_key(body_part):
            if _body_part_key(body_part) in {_body_part_key(b) for b in self.body_parts}:
                return True, f"BodyPartExamined {body_part!r} is {self.name}"
            return False, f"BodyPartExamined {body_part!r} is not {self.name} ({', '.join(self.body_parts)})"
        if self.descriptions is not None:
            for keyword in DESCRIPTION_ATTRIBUTES:
                value = attributes.get(keyword)
                if value is not None and re.search(self.descriptions, value, flags=re.IGNORECASE) \
                        and not self._names_other_part(value):
                    return True, f"no BodyPartExamined; {keyword} {value!r} says {self.name}"
        return False, f"no evidence of {self.name}: no BodyPartExamined" + (
            " and no description says it" if self.descriptions is not None else "")


class CountRange(_Strict):
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> CountRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self

    def contains(self, n: int) -> bool:
        return (self.min is None or n >= self.min) and (self.max is None or n <= self.max)


class Match(_Strict):
    study: AttributeTests = Field(default_factory=dict)
    any_series: AttributeTests = Field(default_factory=dict)  # at least one series passes all these tests
    series_count: CountRange | None = None
    required_series: tuple[RequiredSeries, ...] = ()
    anatomy: Anatomy | None = None  # the any_series and required series must show it

    _expand = field_validator("study", "any_series", mode="before")(_attribute_tests)
    _keywords = field_validator("study", "any_series")(_check_keywords)

    @model_validator(mode="after")
    def _not_empty(self) -> Match:
        if not (self.study or self.any_series or self.series_count or self.required_series or self.anatomy):
            raise ValueError("a rule must test something (study, any_series, series_count, required_series or "
                             "anatomy)")
        return self


class RoutingRule(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    match: Match
    expert: Literal["VISTA3D", "BRATS", "CXR"]
    argument: str | None = None
    questions: tuple[str, ...] = (DEFAULT_QUESTION,)
    destinations: tuple[DicomAddress, ...] | None = None  # None: the DESTINATIONS setting
    priority: Priority = Priority.ROUTINE
    enabled: bool = True

    @field_validator("destinations", mode="before")
    @classmethod
    def _parse_destinations(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [DicomAddress.parse(v) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("questions")
    @classmethod
    def _questions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or any(not q.strip() for q in value):
            raise ValueError("give at least one non-empty question")
        return value

    @model_validator(mode="after")
    def _argument(self) -> RoutingRule:
        if self.expert == "VISTA3D":
            from service.routing.vista3d_groups import VISTA3D_ARGUMENTS

            if self.argument is not None and self.argument not in VISTA3D_ARGUMENTS:
                raise ValueError(f"VISTA3D argument {self.argument!r} is not one of {', '.join(VISTA3D_ARGUMENTS)}")
        elif self.argument is not None:
            raise ValueError(f"{self.expert} takes no argument")
        return self


class RuleSet(_Strict):
    version: Literal[1] = 1
    rules: tuple[RoutingRule, ...]

    @model_validator(mode="after")
    def _unique_names(self) -> RuleSet:
        names = [rule.name for rule in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique: {', '.join(duplicates)}")
        return self


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Parse and validate; every problem is reported with its line and field in one ``RoutingRulesError``."""
    try:
        document = load_located_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise RoutingRulesError(source, [(mark.line + 1 if mark else None, "(syntax)", str(exc).splitlines()[0])]) from None
    if not isinstance(document.data, dict):
        raise RoutingRulesError(source, [(1, "(document)", "expected a mapping with 'version' and 'rules'")])
    try:
        return RuleSet.model_validate(document.data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            location = tuple(error["loc"])
            field = ".".join(str(part) for part in location) or "(document)"
            problems.append((document.line_of(location), field, error["msg"].removeprefix("Value error, ")))
        raise RoutingRulesError(source, problems) from None


def load_rules(path: Path | None) -> RuleSet:
    """The rules in ``path``, or the built-in defaults when ``path`` is None."""
    if path is None:
        return default_rules()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise RoutingRulesError(str(path), [(None, "(file)", f"cannot read: {exc.strerror}")]) from None
    return parse_rules(text, str(path))


def default_rules() -> RuleSet:
    return parse_rules((Path(__file__).parent / "default_rules.yaml").read_text(), "built-in default_rules.yaml")
