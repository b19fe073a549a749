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

#: Turns a string scalar into its value (e.g. `${SECRET}` substitution), given its key path
#: and the document being built (whose `problems` it may add to).
StringHook = Callable[[str, KeyPath, "YamlDocument"], Any]


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
    """A YAML file's text; ConfigError naming the file when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem(str(path), None, (), f"cannot read: {exc.strerror}")]
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(str(path), None, (), "not UTF-8 text")]) from exc


def parse_yaml(text: str, file: str, *, on_string: StringHook | None = None) -> YamlDocument:
    """Compose `text` into plain data with the line of every key; ConfigError if not YAML."""
    document = YamlDocument(file)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigProblem(file, line, (), f"not valid YAML: {reason}")]) from None
    constructor = yaml.SafeLoader("")

    def build(current: yaml.Node, path: KeyPath) -> Any:
        document.lines.setdefault(path, current.start_mark.line + 1)
        if isinstance(current, yaml.MappingNode):
            result: dict[Any, Any] = {}
            for key_node, value_node in current.value:
                key = constructor.construct_object(key_node)  # ints stay ints
                here = (*path, key)
                if key in result:
                    line = key_node.start_mark.line + 1
                    document.problems.append(ConfigProblem(file, line, here, "duplicate key"))
                document.lines[here] = key_node.start_mark.line + 1
                result[key] = build(value_node, here)
            return result
        if isinstance(current, yaml.SequenceNode):
            return [build(item, (*path, i)) for i, item in enumerate(current.value)]
        value = constructor.construct_object(current)
        if on_string is not None and isinstance(value, str):
            return on_string(value, path, document)
        return value

    document.data = build(node, ()) if node is not None else {}
    return document


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
