"""The README stays short and keeps its two commands; every link in the docs leads somewhere;
every config key is documented under docs/; the README's example config is valid."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import AliasChoices, BaseModel

from core.config_base import Strict
from gateway.config.loader import load_config
from gateway.config.schema import Config
from tests.paths import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]

#: The two set-up commands of the quick start, exactly as a fresh machine runs them.
QUICK_START = [
    "./dev.sh demo      # simulated meters -> gateway -> local fake Wattics, printed live "
    "(Ctrl-C stops)",
    "./dev.sh test      # the whole test suite: lint, unit, property, crash and end-to-end tests",
]

_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]+`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text without fenced blocks and inline code, where links are not links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for line in _FENCE.sub("", page.read_text()).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            base = slug(match.group(1))
            name, n = base, 0
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def test_docs_pages_exist() -> None:
    names = {p.relative_to(REPO).as_posix() for p in PAGES}
    for page in [
        "docs/README.md",
        "docs/architecture.md",
        "docs/configuration.md",
        "docs/install.md",
        "docs/mqtt.md",
        "docs/serial-meters.md",
        "docs/modbus-meters.md",
        "docs/benchmarks.md",
        "docs/uplinks/wattics.md",
        "docs/uplinks/enerkey.md",
        "docs/uplinks/pts.md",
        "docs/sources/mts.md",
        "docs/sources/locus.md",
    ]:
        assert page in names


def test_readme_is_short() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; reference goes to docs/"


def test_readme_keeps_the_two_commands() -> None:
    text = README.read_text()
    block = re.search(r"## Quick start\n.*?```sh\n(.*?)```", text, re.DOTALL)
    assert block is not None, "README.md lost its quick start"
    assert block.group(1).splitlines() == QUICK_START
    script = (REPO / "dev.sh").read_text()
    assert "\n  demo)\n" in script and "\n  test)\n" in script


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in _LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"


def _models(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def config_keys() -> set[tuple[str, str]]:
    """(key, model name) of every key the config file may contain."""
    keys: set[tuple[str, str]] = set()
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [Config]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            keys.add((field.alias or name, model.__name__))
            todo.extend(_models(field.annotation))
    return keys


def reference_words() -> set[str]:
    """Every word in a code span of a reference table row under docs/ (not prose: a key
    named only in a paragraph is not in the reference)."""
    words: set[str] = set()
    for page in sorted(DOCS.rglob("*.md")):
        for line in _FENCE.sub("", page.read_text()).splitlines():
            if line.startswith("|") and not re.match(r"^\|[\s:-]*\|", line):
                for span in _CODE_SPAN.findall(line):
                    words.update(re.findall(r"\w+", span))
    return words


def old_keys() -> set[str]:
    """Keys that were renamed or dropped: the old names `renamed()` accepts, and those the
    models handle themselves (`obsolete_key`, `milliseconds_renamed`)."""
    names: set[str] = set()
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [Config]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for field in model.model_fields.values():
            if isinstance(field.validation_alias, AliasChoices):
                names.update(str(c) for c in field.validation_alias.choices[1:])
            todo.extend(_models(field.annotation))
    pattern = re.compile(r'(?:obsolete_key|milliseconds_renamed)\(data, "(\w+)"')
    for source in [*(REPO / "drivers").rglob("*.py"), *(REPO / "gateway").rglob("*.py")]:
        names.update(pattern.findall(source.read_text()))
    return names


def test_every_config_key_is_in_a_reference_table() -> None:
    keys = config_keys()
    # the walk reaches what issue 17 found missing from the reference
    assert {"energy_per_phase", "shutdown_grace_secs", "counter_continuity"} <= {k for k, _ in keys}
    words = reference_words()
    undocumented = sorted(f"{key} ({model})" for key, model in keys if key not in words)
    assert not undocumented, f"config keys missing from the tables under docs/: {undocumented}"


def test_every_renamed_or_dropped_key_is_in_the_renamed_keys_table() -> None:
    text = (DOCS / "configuration.md").read_text()
    table = text[text.index("### Renamed keys") :]
    table = table[: table.index("\n## ")]
    names = old_keys()
    assert {"switch_delay_ms", "inter_frame_gap_ms", "interval"} <= names
    missing = sorted(name for name in names if not re.search(rf"`[^`]*\b{name}\b[^`]*`", table))
    assert not missing, f"old keys missing from docs/configuration.md#renamed-keys: {missing}"


def test_the_key_walk_reaches_every_config_model() -> None:
    """A section validated by hand (not through a model annotation) would hide its keys from
    the tests above: every Strict model is reached, or is a base of one that is."""

    def subclasses(cls: type) -> list[type]:
        return [s for sub in cls.__subclasses__() for s in (sub, *subclasses(sub))]

    reached: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [Config]
    while todo:
        model = todo.pop()
        if model not in reached:
            reached.add(model)
            todo.extend(m for f in model.model_fields.values() for m in _models(f.annotation))
    hidden = [
        model.__name__
        for model in subclasses(Strict)
        if model not in reached and not any(issubclass(r, model) for r in reached)
    ]
    assert hidden == []


def test_the_readme_example_config_is_valid(tmp_path: Path) -> None:
    example = re.search(r"```yaml\n(.*?)```", README.read_text(), re.DOTALL)
    assert example is not None
    path = tmp_path / "config.yaml"
    path.write_text(example.group(1))
    config = load_config(path, {"WATTICS_USER": "u", "WATTICS_PASSWORD": "p"})
    assert config.meters[0].id == "incomer"
