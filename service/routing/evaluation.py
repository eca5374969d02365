"""Which rule a study takes, and why: every rule's verdict is kept so a dry run can explain the choice."""

from __future__ import annotations

from dataclasses import dataclass, field

from dicom_node.facts import SeriesFacts, StudyFacts
from service.routing.rules import Anatomy, AttributeTest, RoutingRule, RuleSet

__all__ = ["RuleVerdict", "RoutingDecision", "route_study"]


@dataclass(frozen=True)
class RuleVerdict:
    rule: str
    matched: bool
    reasons: tuple[str, ...]  # why it matched (what passed) or why not (the first test that failed)


@dataclass(frozen=True)
class RoutingDecision:
    study_uid: str
    rule: RoutingRule | None
    verdicts: tuple[RuleVerdict, ...]
    matched_series: dict[str, str] = field(default_factory=dict)  # required-series name -> Series Instance UID
    # The series that passed the rule's any_series tests and showed its anatomy: the only ones prepare may use.
    eligible_series: tuple[str, ...] = ()

    @property
    def skipped_reason(self) -> str:
        if self.rule is not None:
            return ""
        if not self.verdicts:
            return "no routing rule is enabled"
        return "no routing rule matched: " + "; ".join(f"{v.rule}: {v.reasons[-1]}" for v in self.verdicts)

    def explain(self) -> str:
        lines = [f"study {self.study_uid}"]
        for verdict in self.verdicts:
            mark = "MATCH" if verdict.matched else "no"
            lines.append(f"  [{mark:>5}] {verdict.rule}")
            lines.extend(f"          - {reason}" for reason in verdict.reasons)
        lines.append(f"  -> {self.rule.name if self.rule else 'skipped'}")
        return "\n".join(lines)


def _first_failure(tests: dict[str, AttributeTest], attributes: dict[str, str]) -> str | None:
    for keyword, test in tests.items():
        value = attributes.get(keyword)
        if not test.test(value):
            shown = "absent" if value is None else repr(value)
            return f"{keyword} {shown} fails {test.explain()}"
    return None


def _series_passing(tests: dict[str, AttributeTest], series: tuple[SeriesFacts, ...]) -> list[SeriesFacts]:
    return [s for s in series if _first_failure(tests, s.attributes) is None]


def _with_anatomy(anatomy: Anatomy | None, series: list[SeriesFacts]) -> tuple[list[SeriesFacts], list[str]]:
    """The series that show ``anatomy`` (all of them without one), and why each of the others does not."""
    if anatomy is None:
        return series, []
    shown, refused = [], []
    for each in series:
        ok, reason = anatomy.evidence(each.attributes)
        (shown if ok else refused).append(each if ok else reason)
    return shown, refused


def _evaluate(rule: RoutingRule, facts: StudyFacts) -> tuple[RuleVerdict, dict[str, str], tuple[str, ...]]:
    match = rule.match
    reasons: list[str] = []

    def fail(reason: str) -> tuple[RuleVerdict, dict[str, str], tuple[str, ...]]:
        return RuleVerdict(rule.name, False, (*reasons, reason)), {}, ()

    failure = _first_failure(match.study, facts.attributes)
    if failure:
        return fail(f"study: {failure}")
    if match.study:
        reasons.append("study attributes pass")
    if match.series_count is not None and not match.series_count.contains(len(facts.series)):
        return fail(f"{len(facts.series)} series, outside {match.series_count.min}..{match.series_count.max}")
    passing = list(facts.series)
    if match.any_series:
        passing = _series_passing(match.any_series, facts.series)
        if not passing:
            closest = [_first_failure(match.any_series, s.attributes) for s in facts.series]
            detail = "; ".join(sorted(set(filter(None, closest)))) or "the study has no series"
            return fail(f"no series passes any_series ({detail})")
        reasons.append(f"{len(passing)} series pass any_series")
    if match.anatomy is not None:
        passing, refused = _with_anatomy(match.anatomy, passing)
        if not passing:
            detail = "; ".join(sorted(set(refused))) or "the study has no series"
            return fail(f"anatomy: no series shows {match.anatomy.name} ({detail})")
        reasons.append(f"{len(passing)} series show {match.anatomy.name}: "
                       + match.anatomy.evidence(passing[0].attributes)[1])
    chosen: dict[str, str] = {}
    for required in match.required_series:
        candidates = [s for s in _series_passing(required.where, facts.series) if s.series_uid not in chosen.values()]
        if not candidates:
            return fail(f"required series {required.name!r} not found")
        candidates, refused = _with_anatomy(match.anatomy, candidates)
        if not candidates:
            return fail(f"required series {required.name!r} does not show {match.anatomy.name} "
                        f"({'; '.join(sorted(set(refused)))})")
        best = max(candidates, key=lambda s: s.instance_count)
        chosen[required.name] = best.series_uid
        reasons.append(f"required series {required.name!r}: {best.series_uid}")
    eligible = [s.series_uid for s in passing]
    eligible += [uid for uid in chosen.values() if uid not in eligible]
    return RuleVerdict(rule.name, True, tuple(reasons)), chosen, tuple(eligible)


def route_study(rules: RuleSet, facts: StudyFacts) -> RoutingDecision:
    """The first enabled rule (in file order) whose tests all pass; every rule up to it is explained."""
    verdicts: list[RuleVerdict] = []
    for rule in rules.rules:
        if not rule.enabled:
            continue
        verdict, chosen, eligible = _evaluate(rule, facts)
        verdicts.append(verdict)
        if verdict.matched:
            return RoutingDecision(facts.study_uid, rule, tuple(verdicts), chosen, eligible)
    return RoutingDecision(facts.study_uid, None, tuple(verdicts))
