"""YAML read with the line of every value, so that validation errors can point at the line to fix."""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["LocatedYaml", "load_located_yaml"]

Path_ = tuple[str | int, ...]


class LocatedYaml:
    """Plain Python data from a YAML text, plus ``line_of(path)`` (1-based) for any path into it."""

    def __init__(self, data: Any, lines: dict[Path_, int]) -> None:
        self.data = data
        self._lines = lines

    def line_of(self, path: Path_) -> int | None:
        path = tuple(path)
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return self._lines.get(())


_PLAIN_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("map", "seq", "str", "int", "float", "bool", "null")}


def _convert(node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if node.tag not in _PLAIN_TAGS:
        raise yaml.MarkedYAMLError(problem=f"tag {node.tag} is not allowed (plain data only)", problem_mark=node.start_mark)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node))
            if key in result:
                raise yaml.YAMLError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice")
            result[key] = _convert(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, index), lines) for index, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def load_located_yaml(text: str) -> LocatedYaml:
    """Parse ``text`` with the safe loader (no tags that build objects) and keep every value's line."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[Path_, int] = {}
    if node is None:
        return LocatedYaml(None, lines)
    return LocatedYaml(_convert(node, (), lines), lines)
