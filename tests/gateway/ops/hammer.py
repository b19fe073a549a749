"""A client that hammers the status server from its own process: `python -m
tests.gateway.ops.hammer URL SECONDS CONCURRENCY` prints how many requests it made."""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp

PATHS = ("", "fragment", "api/status", "api/history", "metrics", "static/page.css")


async def hammer(url: str, seconds: float, concurrency: int) -> int:
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        async with aiohttp.ClientSession() as session:
            n = offset
            while time.monotonic() < deadline:
                async with session.get(url + PATHS[n % len(PATHS)]) as response:
                    await response.read()
                    assert response.status == 200, response.status
                done += 1
                n += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return done


if __name__ == "__main__":
    print(asyncio.run(hammer(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))))
