"""Read the YAML config, substitute secrets, validate, and report errors as `file:line: key: why`.

Secrets: a scalar may contain `${NAME}` or `${file:/path}`; gateway.config.secrets says where
NAME is looked for (the environment, systemd's `$CREDENTIALS_DIRECTORY`, then
`/etc/meter-gateway/credentials/NAME`). A secret is resolved only where it is used: each
command says which secrets it needs (`need_secrets`): `run` and `check-config --strict` all of
them, `pts submit` those of the PTS section, `read`, `scan`, `deadletters` none. One that is
needed and missing is an error naming where it was looked for; one that is not needed is a
warning, and a stand-in value takes its place (so the rest is still checked; a key that cannot
be checked without the real value makes it an error after all). No message ever shows a
substituted value, not even in part (`secrets.shows_secret`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from core.config_base import KeyPath, UplinkConfig, legacy_keys_used
from core.config_errors import ConfigError, ConfigProblem, format_path
from core.yaml_lines import StringHook, YamlDocument, describe, parse_yaml, read_text
from drivers.checks import check_meters, resolve_maps
from gateway.config.redaction import learn_config
from gateway.config.schema import Config
from gateway.config.secrets import CREDENTIALS_DIR, SecretLookup, shows_secret

__all__ = ["NeedSecrets", "load_config", "parse_config"]

_REFERENCE = re.compile(r"\$\{([^}]*)\}")

#: Where the valid keys are listed, for "unknown key" problems.
_REFERENCE_DOCS = "check its spelling and docs/configuration.md"

#: Which secrets a command needs: "all", or the key paths (e.g. `("uplinks", "pts")`) under
#: which every secret must resolve; the others only warn.
NeedSecrets = Literal["all"] | tuple[KeyPath, ...]

#: What replaces a message that would show (part of) a secret value.
_HIDDEN = "not valid (the reason would show part of a secret value, so it is not printed)"


@dataclass(frozen=True)
class _Unresolved:
    path: KeyPath
    reference: str
    why: str

    def message(self) -> str:
        if self.reference.startswith("file:"):
            return f"secret file {self.why}"
        return f"secret ${{{self.reference}}} is not set: {self.why}"


def _substitution(lookup: SecretLookup, unresolved: list[_Unresolved]) -> StringHook:
    """`${NAME}` in a string scalar -> the secret; a missing one is noted with its key path
    and replaced by a stand-in that names it (never a value anything would accept as real)."""

    def substitute(value: str, path: KeyPath, document: YamlDocument) -> str:
        if "${" not in value:
            return value

        def replace(match: re.Match[str]) -> str:
            reference = match.group(1).strip()
            resolved, why = lookup.resolve(reference)
            if resolved is None:
                unresolved.append(_Unresolved(path, reference, why))
                return "unset-" + re.sub(r"[^A-Za-z0-9_]", "-", reference)
            return resolved

        return _REFERENCE.sub(replace, value)

    return substitute


def load_config(
    path: str | Path,
    environ: Mapping[str, str] | None = None,
    *,
    need_secrets: NeedSecrets = "all",
    credentials_dir: Path = CREDENTIALS_DIR,
) -> Config:
    """Parse and validate; raise ConfigError listing every problem with file:line:key."""
    text = read_text(path)
    return parse_config(
        text,
        str(path),
        os.environ if environ is None else environ,
        need_secrets=need_secrets,
        credentials_dir=credentials_dir,
    )


def parse_config(
    text: str,
    file: str,
    environ: Mapping[str, str],
    *,
    need_secrets: NeedSecrets = "all",
    credentials_dir: Path = CREDENTIALS_DIR,
) -> Config:
    lookup = SecretLookup(environ, credentials_dir)
    unresolved: list[_Unresolved] = []
    document = parse_yaml(text, file, on_string=_substitution(lookup, unresolved))
    if not isinstance(document.data, dict):
        raise ConfigError([ConfigProblem(file, 1, (), "the top level must be a mapping")])
    problems = list(document.problems)
    uncheckable: set[KeyPath] = set()
    config: Config | None = None
    try:
        with legacy_keys_used() as used:
            config = Config.model_validate(document.data)
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            path, line = document.locate(tuple(error["loc"]))
            stand_in = next((u.path for u in unresolved if _under(path, u.path)), None)
            if stand_in is not None:  # about the stand-in value, not the config
                uncheckable.add(stand_in)
                continue
            problems.append(
                ConfigProblem(file, line, path, describe(error, path, unknown_key=_REFERENCE_DOCS))
            )
    in_map_files: list[ConfigProblem] = []
    if config is not None:
        in_config, in_map_files = resolve_maps(config, Path(file).parent)
        for path, message in [*cross_check(config), *in_config]:
            problems.append(document.problem(path, message))
    warnings: list[ConfigProblem] = []
    for item in unresolved:
        if item.path in uncheckable:
            message = f"{item.message()}; this key cannot be checked without it"
            problems.append(document.problem(item.path, message))
        elif _needed(item.path, need_secrets):
            problems.append(document.problem(item.path, item.message()))
        else:
            message = f"{item.message()}: `run` needs it (`check-config --strict` refuses it)"
            warnings.append(document.problem(item.path, message))
    problems = [_hide_secrets(p, lookup) for p in problems]
    if problems or in_map_files:
        problems = _in_order(problems)
        in_map_files = [_hide_secrets(p, lookup) for p in in_map_files]
        raise ConfigError(problems + in_map_files)  # a map file's problems: in its own order
    assert config is not None
    learn_config(config)  # from now on every outlet of text masks this config's secrets
    config.unset_secrets.extend(_hide_secrets(w, lookup) for w in _in_order(warnings))
    config.warnings.extend(_hide_secrets(w, lookup) for w in _legacy_warnings(document, used))
    return config


def _in_order(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    return sorted(problems, key=lambda p: (p.line or 0, format_path(p.path)))


def _under(path: KeyPath, prefix: KeyPath) -> bool:
    return path[: len(prefix)] == prefix


def _needed(path: KeyPath, need: NeedSecrets) -> bool:
    return need == "all" or any(_under(path, prefix) for prefix in need)


def _hide_secrets(problem: ConfigProblem, lookup: SecretLookup) -> ConfigProblem:
    if not lookup.found or not shows_secret(problem.message, lookup.found):
        return problem
    return ConfigProblem(problem.file, problem.line, problem.path, _HIDDEN)


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
            for path, why in section.site_problems(config.gateway):
                yield ("uplinks", name, *path), why


def _legacy_warnings(document: YamlDocument, used: list[tuple[str, str]]) -> list[ConfigProblem]:
    """One warning per old key used, at its line (the first place the document has it)."""
    warnings: list[ConfigProblem] = []
    for key, advice in dict.fromkeys(used):
        paths = [path for path in document.lines if path and path[-1] == key]
        for path in paths or [()]:
            warnings.append(document.problem(path, f"{key!r}: {advice}"))
    return sorted(warnings, key=lambda p: (p.line or 0, format_path(p.path)))
