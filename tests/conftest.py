"""Shared test set-up. Fixture modules live in tests/fixtures/ (one per real part we start)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from core import redact
from tests.helpers.eventually import eventually, eventually_sync

pytest_plugins = [
    "tests.fixtures.network",
    "tests.fixtures.mosquitto",
    "tests.fixtures.modbus",
    "tests.fixtures.wattics",
    "tests.fixtures.enerkey",
    "tests.fixtures.pts",
    "tests.fixtures.locus",
    "tests.fixtures.mts",
    "tests.fixtures.tmpfs",
    "tests.fixtures.wheelhouse",
]


@pytest.fixture(autouse=True)
def fresh_redactor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process's redactor learns every secret of every config loaded in this process: each
    test starts with one that knows none (else a short secret of one test, say "p", masks a
    whole value of the next)."""
    monkeypatch.setattr(redact, "PROCESS", redact.Redactor())


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    """Like pymodbus' own suite: a test that leaves threads running fails."""
    before = set(threading.enumerate())
    yield

    def extra() -> list[threading.Thread]:
        new = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        return [t for t in new if not t.daemon or t.name.startswith("store")]

    try:
        eventually_sync(lambda: not extra(), timeout=2.5, interval=0.05, what="threads to end")
    except AssertionError:
        pytest.fail(f"test left threads running: {[t.name for t in extra()]}")


@pytest.fixture(autouse=True)
async def no_leftover_tasks() -> None:
    """A test that leaves asyncio tasks running on its loop fails (runs at teardown)."""
    yield
    current = asyncio.current_task()
    leftover = [t for t in asyncio.all_tasks() if t is not current and not t.done()]

    def running() -> list[asyncio.Task[object]]:
        return [t for t in leftover if not t.done()]

    try:
        await eventually(lambda: not running(), timeout=1.0, interval=0.05, what="tasks to end")
    except AssertionError:
        for task in running():
            task.cancel()
        pytest.fail(f"test left tasks running: {[t.get_name() for t in running()]}")
