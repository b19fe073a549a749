"""`eventually()`: the one way the suite waits for something it cannot await.

A test that must see a counter grow, a log line appear or a daemon come up polls a
condition until it holds::

    await eventually(lambda: fake.total_accepted() >= 3, timeout=10, what="3 packets")

The condition takes no arguments and may be sync or async; its first truthy result is
returned. An exception it raises ends the wait at once (an `assert not task.done()` inside
a condition fails the test straight away), except those listed in `retry_on`, which count
as "not yet" (a read that fails until a device comes back). On timeout: AssertionError
naming `what` and the last result (or exception) seen. `eventually_sync` is the same for
code outside an event loop (fixtures' set-up and teardown).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Seconds between two looks, unless a caller says otherwise.
INTERVAL_S = 0.01


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 5.0,
    interval: float = INTERVAL_S,
    what: str | None = None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> T:
    """Poll `condition` every `interval` s until it is truthy (returned) or `timeout` s passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
        except retry_on as exc:
            last: object = exc
        else:
            if result:
                return result  # type: ignore[return-value]
            last = result
        if time.monotonic() > deadline:
            raise _timed_out(condition, timeout, what, last)
        await asyncio.sleep(interval)


def eventually_sync(
    condition: Callable[[], T],
    *,
    timeout: float = 5.0,
    interval: float = INTERVAL_S,
    what: str | None = None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> T:
    """`eventually` for code without an event loop: the same, sleeping with time.sleep."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except retry_on as exc:
            last: object = exc
        else:
            if result:
                return result
            last = result
        if time.monotonic() > deadline:
            raise _timed_out(condition, timeout, what, last)
        time.sleep(interval)


def _timed_out(condition: object, timeout: float, what: str | None, last: object) -> AssertionError:
    name = what or getattr(condition, "__qualname__", repr(condition))
    seen = repr(last)
    if len(seen) > 1000:
        seen = seen[:1000] + "..."
    error = AssertionError(f"timed out after {timeout:g} s waiting for {name} (last seen: {seen})")
    if isinstance(last, BaseException):
        error.__cause__ = last
    return error
