"""Declarative routing: which expert, arguments, questions, destinations and priority a study gets."""

from service.routing.evaluation import RoutingDecision, RuleVerdict, route_study
from service.routing.rules import (
    DEFAULT_QUESTION,
    AttributeTest,
    MissingPolicy,
    Priority,
    RequiredSeries,
    RoutingRule,
    RoutingRulesError,
    RuleSet,
    default_rules,
    load_rules,
    parse_rules,
)

__all__ = [
    "DEFAULT_QUESTION",
    "AttributeTest",
    "MissingPolicy",
    "Priority",
    "RequiredSeries",
    "RoutingDecision",
    "RoutingRule",
    "RoutingRulesError",
    "RuleSet",
    "RuleVerdict",
    "default_rules",
    "load_rules",
    "parse_rules",
    "route_study",
]
