"""Shared test set-up. Fixture modules live in tests/fixtures/ (one per real part we start)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.fixtures.network",
    "tests.fixtures.mosquitto",
    "tests.fixtures.modbus",
    "tests.fixtures.wattics",
    "tests.fixtures.enerkey",
    "tests.fixtures.pts",
    "tests.fixtures.locus",
    "tests.fixtures.mts",
]


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    """Like pymodbus' own suite: a test that leaves threads running fails."""
    before = set(threading.enumerate())
    yield
    deadline = 50
    while deadline:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        extra = [t for t in extra if not t.daemon or t.name.startswith("store")]
        if not extra:
            return
        threading.Event().wait(0.05)
        deadline -= 1
    pytest.fail(f"test left threads running: {[t.name for t in extra]}")


@pytest.fixture(autouse=True)
async def no_leftover_tasks() -> None:
    """A test that leaves asyncio tasks running on its loop fails (runs at teardown)."""
    yield
    current = asyncio.current_task()
    leftover = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for _ in range(20):
        if not leftover:
            return
        await asyncio.sleep(0.05)
        leftover = [t for t in leftover if not t.done()]
    for task in leftover:
        task.cancel()
    pytest.fail(f"test left tasks running: {[t.get_name() for t in leftover]}")
