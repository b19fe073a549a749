"""Honouring a cancel that a library lost on the way (Python 3.11).

On 3.11, `asyncio.wait_for` returns the inner result and drops the cancel when both arrive
together (fixed in 3.12); pymodbus awaits it in connect and execute, aiomqtt in every call. The
request still shows in `Task.cancelling()`, so after each call into such a library the caller
looks there: a task that went on after its cancel would keep the daemon from stopping (a poll
task asleep till its next boundary, marked cancelling, for ever).
"""

from __future__ import annotations

import asyncio


def raise_if_cancelling(cause: BaseException | None = None) -> None:
    """Raise CancelledError if the current task was asked to stop and has not yet."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from cause
