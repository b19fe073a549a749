"""Read the YAML config, substitute secrets, validate, and report errors as `file:line: key: why`.

Secrets: a scalar may contain `${NAME}`. NAME is looked up in the environment, then as a file
`$CREDENTIALS_DIRECTORY/NAME` (systemd `LoadCredential=`). `${file:/path}` reads a file. A
missing secret names the variable; a substituted value is never echoed in any message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from core.config_base import UplinkSection
from gateway.config.schema import Config

_REFERENCE = re.compile(r"\$\{([^}]*)\}")

Key = str | int
KeyPath = tuple[Key, ...]


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    line: int | None
    path: KeyPath
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = format_path(self.path)
        return f"{where}: {key}: {self.message}" if key else f"{where}: {self.message}"


class ConfigError(Exception):
    """Every problem found in one config file; the CLI prints them and exits with code 2."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def format_path(path: KeyPath) -> str:
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text


class _Document:
    """The parsed YAML plus the line of every key, so errors can point into the file."""

    def __init__(self, file: str, text: str, environ: Mapping[str, str]) -> None:
        self.file = file
        self.environ = environ
        self.lines: dict[KeyPath, int] = {}
        self.problems: list[ConfigProblem] = []
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            reason = getattr(exc, "problem", None) or str(exc)
            raise ConfigError([ConfigProblem(file, line, (), f"not valid YAML: {reason}")]) from exc
        self.data: Any = self._build(node, ()) if node is not None else {}

    def _build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = yaml.SafeLoader(  # resolve the key's scalar type (ints stay ints)
                    ""
                ).construct_object(key_node)
                if key in result:
                    self.problems.append(
                        ConfigProblem(
                            self.file, key_node.start_mark.line + 1, (*path, key), "duplicate key"
                        )
                    )
                result[key] = self._build(value_node, (*path, key))
                self.lines[(*path, key)] = key_node.start_mark.line + 1
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self._build(item, (*path, i)) for i, item in enumerate(node.value)]
        value = yaml.SafeLoader("").construct_object(node)
        if isinstance(value, str) and "${" in value:
            return self._substitute(value, path)
        return value

    def _substitute(self, value: str, path: KeyPath) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1).strip()
            resolved = resolve_secret(name, self.environ)
            if resolved is None:
                self.problems.append(
                    ConfigProblem(self.file, self.lines.get(path), path, missing_secret(name))
                )
                return ""
            return resolved

        return _REFERENCE.sub(replace, value)

    def line_of(self, loc: tuple[Any, ...]) -> tuple[KeyPath, int | None]:
        """Map a pydantic error location onto the document, skipping union tags it adds."""
        node: Any = self.data
        path: KeyPath = ()
        for key in loc:
            in_mapping = isinstance(node, dict) and key in node
            in_list = isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node)
            if in_mapping or in_list:
                node = node[key]
                path = (*path, key)
        line = self.lines.get(path)
        while line is None and path:
            path = path[:-1]
            line = self.lines.get(path)
        return path, line


def missing_secret(name: str) -> str:
    if name.startswith("file:"):
        return f"secret file {name[5:]!r} cannot be read"
    return (
        f"secret ${{{name}}} is not set (neither in the environment nor as a credential file "
        "in $CREDENTIALS_DIRECTORY)"
    )


def resolve_secret(name: str, environ: Mapping[str, str]) -> str | None:
    if name.startswith("file:"):
        return _read_secret_file(Path(name[5:]))
    if name in environ:
        return environ[name]
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if directory and "/" not in name:
        return _read_secret_file(Path(directory) / name)
    return None


def _read_secret_file(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError:
        return None


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Parse and validate; raise ConfigError listing every problem with file:line:key."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(file, None, (), f"cannot read: {exc.strerror}")]) from exc
    return parse_config(text, file, os.environ if environ is None else environ)


def parse_config(text: str, file: str, environ: Mapping[str, str]) -> Config:
    document = _Document(file, text, environ)
    if not isinstance(document.data, dict):
        raise ConfigError([ConfigProblem(file, 1, (), "the top level must be a mapping")])
    problems = list(document.problems)
    config: Config | None = None
    try:
        config = Config.model_validate(document.data)
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            path, line = document.line_of(tuple(error["loc"]))
            problems.append(ConfigProblem(file, line, path, _describe(error, path, error["loc"])))
    in_map_files: list[ConfigProblem] = []
    if config is not None:
        from drivers.modbus.maps import resolve_maps

        in_config, in_map_files = resolve_maps(config, Path(file).parent)
        for path, message in [*cross_check(config), *in_config]:
            _, line = document.line_of(path)
            problems.append(ConfigProblem(file, line, path, message))
    if problems or in_map_files:
        problems.sort(key=lambda p: (p.line or 0, format_path(p.path)))
        raise ConfigError(problems + in_map_files)  # a map file's problems: in its own order
    assert config is not None
    return config


def _describe(error: Any, path: KeyPath, loc: tuple[Any, ...]) -> str:
    """A pydantic message made readable; never includes the offending value (it may be secret)."""
    message = str(error["msg"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key (check its spelling and the README's configuration reference)"
    if kind == "missing":
        missing = loc[-1]
        return f"required key {missing!r} is missing" if path != loc else "required"
    if kind == "union_tag_invalid":
        expected = error.get("ctx", {}).get("expected_tags", "")
        return f"unknown type (expected one of {expected})"
    return message.removeprefix("Value error, ")


def cross_check(config: Config) -> Iterator[tuple[KeyPath, str]]:
    """Relations pydantic cannot see: references between sections and known meter models."""
    from drivers.modbus.maps import model_problem
    from drivers.serial.config import is_serial_bus, serial_cross_check

    seen: set[str] = set()
    for index, meter in enumerate(config.meters):
        if meter.id in seen:
            yield ("meters", index, "id"), f"meter id {meter.id!r} is used twice"
        seen.add(meter.id)
        if meter.bus not in config.buses:
            yield ("meters", index, "bus"), f"no bus named {meter.bus!r} under buses"
        elif is_serial_bus(config.buses[meter.bus]):
            # D0/P1/SML meters need no register map; serial_cross_check checks the rest
            if meter.register_map is not None:
                yield (
                    ("meters", index, "register_map"),
                    "register_map applies to Modbus meters only",
                )
        elif (problem := model_problem(meter)) is not None:
            key, message = problem
            yield ("meters", index, key) if key else ("meters", index), message
    yield from serial_cross_check(config)
    for name, source in config.sources:
        if source is None:
            continue
        for path, meter_id in source.meter_ids():
            if meter_id in seen:
                yield ("sources", name, *path), f"meter id {meter_id!r} is used twice"
            seen.add(meter_id)
    for name, section in config.uplinks:
        if isinstance(section, UplinkSection):
            for path, meter_id in section.meter_references():
                if meter_id not in seen:
                    yield ("uplinks", name, *path), f"no meter with id {meter_id!r}"
