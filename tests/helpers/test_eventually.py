"""The one polling wait of the suite (tests/helpers/eventually.py)."""

from __future__ import annotations

import time

import pytest

from tests.helpers.eventually import eventually, eventually_sync


async def test_the_first_truthy_result_is_returned_sync_or_async() -> None:
    seen: list[int] = []

    def grows() -> list[int] | None:
        seen.append(len(seen))
        return seen if len(seen) >= 3 else None

    async def also_async() -> str:
        return "ready"

    assert await eventually(grows, timeout=1) == [0, 1, 2]
    assert await eventually(also_async) == "ready"


async def test_a_timeout_names_what_was_awaited_and_the_last_value() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"0.1 s waiting for the answer \(last seen: 0\)"):
        await eventually(lambda: 0, timeout=0.1, what="the answer")
    assert 0.1 <= time.monotonic() - started < 1


async def test_an_exception_ends_the_wait_unless_it_is_retried() -> None:
    def broken() -> bool:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        await eventually(broken, timeout=5)
    attempts: list[int] = []

    async def fails_twice() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("not yet")
        return "up"

    assert await eventually(fails_twice, interval=0, retry_on=ConnectionError) == "up"
    with pytest.raises(AssertionError, match="last seen: KeyError") as caught:
        await eventually(broken, timeout=0.05, retry_on=KeyError, what="it")
    assert isinstance(caught.value.__cause__, KeyError)


def test_the_sync_variant_waits_the_same_way() -> None:
    deadline = time.monotonic() + 0.05
    assert eventually_sync(lambda: time.monotonic() > deadline, timeout=1) is True
    with pytest.raises(AssertionError, match="waiting for nothing"):
        eventually_sync(lambda: None, timeout=0.05, what="nothing")
