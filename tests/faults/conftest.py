"""Helpers of the fault-injection suite: the daemon as a real process, simulated meters, and
ways to read what reached the fake cloud.

The suite has a short form (CI, the default) and a long form (MG_FAULTS_LONG=1): each test
takes its counts from `long_form()` so both forms stay bounded in time and count.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from drivers.modbus.register_map import load_builtin
from drivers.simulator import SimulatedMeter
from tests.fixtures.modbus import SDM630_VALUES
from tests.helpers.eventually import eventually
from tests.paths import REPO

#: How long a daemon may take from exec to its "running" line (imports, store open).
START_TIMEOUT_S = 15.0


def long_form() -> bool:
    """MG_FAULTS_LONG=1 runs the long form (more kills, longer runs)."""
    return os.environ.get("MG_FAULTS_LONG", "") == "1"


def sdm630_meters(count: int) -> list[SimulatedMeter]:
    """`count` simulated SDM630s, unit ids 1..count, answering the fixture's known values."""
    meters = []
    for unit in range(1, count + 1):
        meter = SimulatedMeter(load_builtin("sdm630"), unit_id=unit)
        meter.set_values(SDM630_VALUES)
        meters.append(meter)
    return meters


def packet_ms(packet: dict[str, object]) -> int:
    """A Wattics packet's instant, epoch ms (its tsISO8601 is local time with offset)."""
    return round(datetime.fromisoformat(str(packet["tsISO8601"])).timestamp() * 1000)


def stored_stamps(db: Path) -> dict[str, list[int]]:
    """Per meter, the stored sample times in store (row id) order, read without writing."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT meter, ts_ms FROM samples ORDER BY id").fetchall()
    connection.close()
    stamps: dict[str, list[int]] = {}
    for meter, ts_ms in rows:
        stamps.setdefault(meter, []).append(ts_ms)
    return stamps


class DaemonProcess:
    """`python -m gateway run -c CONFIG` as systemd would run it; one log file per start."""

    def __init__(self, config: Path, env: dict[str, str], log_dir: Path) -> None:
        self.config = config
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.starts = 0
        self.process: asyncio.subprocess.Process | None = None
        self.log_path: Path | None = None

    async def start(self, *extra_args: str) -> None:
        if self.process is not None and self.process.returncode is None:
            raise RuntimeError("the daemon is already running")
        self.starts += 1
        self.log_path = self.log_dir / f"daemon-{self.starts:03d}.log"
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "gateway", *extra_args, "run", "-c", str(self.config)),
                cwd=REPO,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def all_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def wait_running(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until the daemon logged that it runs (store open, tasks started)."""

        def started() -> bool:
            if " running: " in self.log_text():
                return True
            if not self.running:
                raise AssertionError(f"daemon exited while starting:\n{self.log_text()[-3000:]}")
            return False

        await eventually(started, timeout=timeout, interval=0.02, what="the daemon to run")

    async def kill9(self) -> int:
        """SIGKILL now (a power cut, as far as the process can tell); its exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        return await self.process.wait()

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; the exit code (0 when it stopped cleanly)."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout):
            return await self.process.wait()

    async def ensure_dead(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@pytest.fixture
async def daemon_factory(
    tmp_path: Path,
) -> AsyncIterator[Callable[[Path, dict[str, str]], DaemonProcess]]:
    """Make DaemonProcess objects; every one is killed at teardown whatever the test did."""
    made: list[DaemonProcess] = []

    def make(config: Path, env: dict[str, str]) -> DaemonProcess:
        log_dir = tmp_path / f"logs-{len(made)}"
        log_dir.mkdir()
        daemon = DaemonProcess(config, env, log_dir)
        made.append(daemon)
        return daemon

    try:
        yield make
    finally:
        for daemon in made:
            await daemon.ensure_dead()


@pytest.fixture
def fault_seed() -> Iterator[int]:
    """The random seed of a fault run (MG_FAULTS_SEED to replay one); printed on failure."""
    seed = int(os.environ.get("MG_FAULTS_SEED", "0")) or time.time_ns() % 1_000_000
    print(f"fault seed: MG_FAULTS_SEED={seed}")
    yield seed


@contextlib.asynccontextmanager
async def slow_proxy(target: int, delay: float) -> AsyncIterator[int]:
    """A TCP proxy to 127.0.0.1:`target` holding back every answer by `delay`; its port."""
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wait: float) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(4096):
                await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        meter_r, meter_w = await asyncio.open_connection("127.0.0.1", target)
        for task in (
            asyncio.create_task(pipe(client_r, meter_w, 0.0)),
            asyncio.create_task(pipe(meter_r, client_w, delay)),
        ):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
