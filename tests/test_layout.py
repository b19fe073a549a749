"""The house's conventions, checked (Telegraf's plugins/all_test.go in spirit).

- The import-linter contracts in pyproject.toml hold (layers, plugin independence) and there is
  no import cycle, not even one made only of type-hint imports.
- One folder per plugin: every uplink and source folder has a config module that registers its
  builder, and every registered builder exists; every bus type in the config is registered.
- Config models are named ...Config; no module of core/, drivers/ or gateway/ exceeds 600 lines.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, get_args

import pytest
from pydantic import BaseModel

from core.config_base import Strict
from tests.paths import REPO

PACKAGES = ("core", "drivers", "gateway")
MAX_LINES = 600


def test_the_import_contracts_hold() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _cycles(graph: Any) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = []
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work.append((root, iter(sorted(graph.find_modules_directly_imported_by(root)))))
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_there_is_no_import_cycle() -> None:
    import grimp

    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=False)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    class Graph:
        modules: ClassVar[set[str]] = {"a", "b", "c"}

        @staticmethod
        def find_modules_directly_imported_by(module: str) -> set[str]:
            return {"a": {"b"}, "b": {"a", "c"}, "c": set()}[module]

    assert _cycles(Graph()) == [["a", "b"]]


def _plugin_folders(kind: str) -> list[Path]:
    folder = REPO / "gateway" / kind
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").exists())


@pytest.mark.parametrize("kind", ["uplinks", "sources"])
def test_every_plugin_folder_registers_itself_and_its_builder_exists(kind: str) -> None:
    import gateway.config.schema  # imports every plugin's config module
    from gateway.sources.registry import SOURCES
    from gateway.uplinks.registry import UPLINKS

    registry = UPLINKS if kind == "uplinks" else SOURCES
    folders = [p.name for p in _plugin_folders(kind)]
    assert folders and sorted(folders) == registry.names()
    for name in folders:
        assert (REPO / "gateway" / kind / name / "config.py").exists()
        assert callable(registry.get(name))
    section = "UplinksConfig" if kind == "uplinks" else "SourcesConfig"
    fields = getattr(gateway.config.schema, section).model_fields
    assert sorted(fields) == registry.names()


def test_every_bus_type_is_registered_and_builds() -> None:
    from drivers.config import BusConfig
    from drivers.registry import BUSES

    (union, _) = get_args(BusConfig)
    types = sorted(get_args(model.model_fields["type"].annotation)[0] for model in get_args(union))
    assert types == BUSES.names()
    for name in types:
        assert callable(BUSES.get(name))


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):
        yield from _models(arg)


def test_config_models_are_named_config() -> None:
    from gateway.config.schema import Config

    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [Config]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for info in model.model_fields.values():
            todo.extend(_models(info.annotation))
    sections = sorted(m.__name__ for m in seen if issubclass(m, Strict))
    assert len(sections) > 20
    assert [name for name in sections if not name.endswith("Config")] == []


def test_no_module_is_over_600_lines() -> None:
    long = {
        str(path.relative_to(REPO)): n
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
