"""YAML with the line of every key: the one loader of the config file and of register maps.

Errors must point into the file (`file:line: key: why`), so the document is composed node by
node and every key path remembers its line. A key given twice in one mapping is a problem
(YAML itself would silently keep the last one). pydantic's error locations are mapped back
onto the document by `locate`, and its messages made readable by `describe`; neither ever
repeats the offending value (it may be a secret).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.config_base import KeyPath
from core.config_errors import ConfigError, ConfigProblem
from core.files import MAX_CONFIG_BYTES, FileRefused, read_bounded

#: Turns a string scalar into its value (e.g. `${SECRET}` substitution), given its key path
#: and the document being built (whose `problems` it may add to).
StringHook = Callable[[str, KeyPath, "YamlDocument"], Any]

#: Values (scalars, lists, mappings) one document may build, aliases counted each time they
#: are used: 50x a 1,000-meter site's config, a thousandth of an alias bomb.
MAX_VALUES = 200_000
#: Nesting levels of lists and mappings (a config uses about 6, a register map 4).
MAX_DEPTH = 40


@dataclass
class YamlDocument:
    file: str
    data: Any = None
    #: The line (1-based) of every key path seen.
    lines: dict[KeyPath, int] = field(default_factory=dict)
    #: Problems found while reading (duplicate keys); the caller reports them with its own.
    problems: list[ConfigProblem] = field(default_factory=list)

    def line_of(self, path: KeyPath) -> int | None:
        """The line of `path`, or of its nearest ancestor the document has."""
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path)

    def locate(self, loc: tuple[Any, ...]) -> tuple[KeyPath, int | None]:
        """A pydantic error location as (the part of it in the document, its line).

        Parts the document lacks (union tags pydantic adds, a missing key) are skipped.
        """
        node: Any = self.data
        path: KeyPath = ()
        for key in loc:
            in_mapping = isinstance(node, dict) and key in node
            in_list = isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node)
            if in_mapping or in_list:
                node = node[key]
                path = (*path, key)
        return path, self.line_of(path)

    def problem(self, path: KeyPath, message: str) -> ConfigProblem:
        return ConfigProblem(self.file, self.line_of(path), path, message)


def read_text(path: str | Path) -> str:
    """A YAML file's text; ConfigError naming the file when it cannot (or must not) be read."""
    try:
        data = read_bounded(path, MAX_CONFIG_BYTES)
    except FileRefused as exc:
        raise ConfigError([ConfigProblem(str(path), None, (), exc.reason)]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([ConfigProblem(str(path), None, (), "not UTF-8 text")]) from None


class _Refused(Exception):
    """Building stopped at a node: (line, why)."""

    def __init__(self, line: int, why: str) -> None:
        self.line = line
        self.why = why


def parse_yaml(text: str, file: str, *, on_string: StringHook | None = None) -> YamlDocument:
    """Compose `text` into plain data with the line of every key; ConfigError if not YAML."""
    document = YamlDocument(file)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError([ConfigProblem(file, line, (), f"not valid YAML: {reason}")]) from None
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise ConfigError([ConfigProblem(file, None, (), _TOO_DEEP)]) from None
    constructor = yaml.SafeLoader("")
    budget = [MAX_VALUES]
    building: set[int] = set()  # the nodes being built: an alias to one is recursive

    def build(current: yaml.Node, path: KeyPath, depth: int) -> Any:
        line = current.start_mark.line + 1
        document.lines.setdefault(path, line)
        budget[0] -= 1
        if budget[0] < 0:
            raise _Refused(line, _TOO_MANY)
        if isinstance(current, yaml.ScalarNode):
            value = constructor.construct_object(current)
            if on_string is not None and isinstance(value, str):
                return on_string(value, path, document)
            return value
        if depth > MAX_DEPTH:
            raise _Refused(line, _TOO_DEEP)
        if id(current) in building:
            raise _Refused(line, "an anchor (&name) is used inside itself (*name): endless")
        building.add(id(current))
        try:
            if isinstance(current, yaml.SequenceNode):
                return [build(item, (*path, i), depth + 1) for i, item in enumerate(current.value)]
            result: dict[Any, Any] = {}
            for key_node, value_node in current.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise _Refused(key_node.start_mark.line + 1, "a key must be a plain value")
                key = constructor.construct_object(key_node)  # ints stay ints
                here = (*path, key)
                if key in result:
                    line = key_node.start_mark.line + 1
                    document.problems.append(ConfigProblem(file, line, here, "duplicate key"))
                document.lines[here] = key_node.start_mark.line + 1
                result[key] = build(value_node, here, depth + 1)
            return result
        finally:
            building.discard(id(current))

    try:
        document.data = build(node, (), 0) if node is not None else {}
    except _Refused as exc:
        raise ConfigError([ConfigProblem(file, exc.line, (), exc.why)]) from None
    return document


_TOO_MANY = (
    f"aliases expand to more than {MAX_VALUES:,} values (an alias bomb?): a config needs far fewer"
)
_TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep: a config needs far fewer"


def describe(error: Any, path: KeyPath, *, unknown_key: str) -> str:
    """A pydantic error as a short sentence; `unknown_key` says where the valid keys are."""
    kind = error["type"]
    loc = tuple(error["loc"])
    if kind == "extra_forbidden":
        return f"unknown key ({unknown_key})"
    if kind == "missing":
        return f"required key {loc[-1]!r} is missing" if path != loc else "required"
    if kind == "union_tag_invalid":
        expected = error.get("ctx", {}).get("expected_tags", "")
        return f"unknown type (expected one of {expected})"
    return str(error["msg"]).removeprefix("Value error, ")
