"""The README stays short and keeps its two commands; every link in the docs leads somewhere;
every config key is documented under docs/; the README's example config is valid."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

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


def test_every_config_key_is_documented() -> None:
    text = "\n".join(p.read_text() for p in sorted(DOCS.rglob("*.md")))
    words = {w for span in _CODE_SPAN.findall(text) for w in re.findall(r"\w+", span)}
    undocumented = sorted(f"{key} ({model})" for key, model in config_keys() if key not in words)
    assert not undocumented, f"config keys missing from docs/: {undocumented}"


def test_the_readme_example_config_is_valid(tmp_path: Path) -> None:
    example = re.search(r"```yaml\n(.*?)```", README.read_text(), re.DOTALL)
    assert example is not None
    path = tmp_path / "config.yaml"
    path.write_text(example.group(1))
    config = load_config(path, {"WATTICS_USER": "u", "WATTICS_PASSWORD": "p"})
    assert config.meters[0].id == "incomer"
