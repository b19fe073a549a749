"""Read the YAML config, substitute secrets, validate, and report errors as `file:line: key: why`.

Secrets: a scalar may contain `${NAME}`. NAME is looked up in the environment, then as a file
`$CREDENTIALS_DIRECTORY/NAME` (systemd `LoadCredential=`). `${file:/path}` reads a file. A
missing secret names the variable; a substituted value is never echoed in any message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from pydantic import ValidationError

from core.config_base import KeyPath, UplinkConfig, legacy_keys_used
from core.config_errors import ConfigError, ConfigProblem, format_path
from core.yaml_lines import StringHook, YamlDocument, describe, parse_yaml, read_text
from drivers.checks import check_meters, resolve_maps
from gateway.config.schema import Config

__all__ = ["load_config", "parse_config"]

_REFERENCE = re.compile(r"\$\{([^}]*)\}")

#: Where the valid keys are listed, for "unknown key" problems.
_REFERENCE_DOCS = "check its spelling and docs/configuration.md"


def _substitution(environ: Mapping[str, str]) -> StringHook:
    """`${NAME}` in a string scalar -> the secret; a missing one is a problem at its line."""

    def substitute(value: str, path: KeyPath, document: YamlDocument) -> str:
        if "${" not in value:
            return value

        def replace(match: re.Match[str]) -> str:
            name = match.group(1).strip()
            resolved = resolve_secret(name, environ)
            if resolved is None:
                document.problems.append(document.problem(path, missing_secret(name)))
                return ""
            return resolved

        return _REFERENCE.sub(replace, value)

    return substitute


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
    text = read_text(path)
    return parse_config(text, str(path), os.environ if environ is None else environ)


def parse_config(text: str, file: str, environ: Mapping[str, str]) -> Config:
    document = parse_yaml(text, file, on_string=_substitution(environ))
    if not isinstance(document.data, dict):
        raise ConfigError([ConfigProblem(file, 1, (), "the top level must be a mapping")])
    problems = list(document.problems)
    config: Config | None = None
    try:
        with legacy_keys_used() as used:
            config = Config.model_validate(document.data)
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            path, line = document.locate(tuple(error["loc"]))
            problems.append(
                ConfigProblem(file, line, path, describe(error, path, unknown_key=_REFERENCE_DOCS))
            )
    in_map_files: list[ConfigProblem] = []
    if config is not None:
        in_config, in_map_files = resolve_maps(config, Path(file).parent)
        for path, message in [*cross_check(config), *in_config]:
            problems.append(document.problem(path, message))
    if problems or in_map_files:
        problems.sort(key=lambda p: (p.line or 0, format_path(p.path)))
        raise ConfigError(problems + in_map_files)  # a map file's problems: in its own order
    assert config is not None
    config.warnings.extend(_legacy_warnings(document, used))
    return config


def cross_check(config: Config) -> Iterator[tuple[KeyPath, str]]:
    """Relations pydantic cannot see: references between sections and known meter models."""
    yield from check_meters(config)
    seen = {meter.id for meter in config.meters}
    for name, source in config.sources:
        if source is None:
            continue
        for path, meter_id in source.meter_ids():
            if meter_id in seen:
                yield ("sources", name, *path), f"meter id {meter_id!r} is used twice"
            seen.add(meter_id)
    for name, section in config.uplinks:
        if isinstance(section, UplinkConfig):
            for path, meter_id in section.meter_references():
                if meter_id not in seen:
                    yield ("uplinks", name, *path), f"no meter with id {meter_id!r}"


def _legacy_warnings(document: YamlDocument, used: list[tuple[str, str]]) -> list[ConfigProblem]:
    """One warning per old key used, at its line (the first place the document has it)."""
    warnings: list[ConfigProblem] = []
    for key, advice in dict.fromkeys(used):
        paths = [path for path in document.lines if path and path[-1] == key]
        for path in paths or [()]:
            warnings.append(document.problem(path, f"{key!r}: {advice}"))
    return sorted(warnings, key=lambda p: (p.line or 0, format_path(p.path)))
