"""SIGTERM stops the daemon within its budget, whatever a library does with a cancel.

On Python 3.11 `asyncio.wait_for` can return a result and drop the cancel that arrived with it
(fixed in 3.12); pymodbus uses it in connect and execute. A poll task that lost its cancel went
on to sleep till its next boundary, and the TaskGroup waited for it for ever: "task poller did
not stop within 2.0s", then a hang until SIGKILL. Tested on the Python that runs the suite
(Raspberry Pi OS bookworm ships 3.11), against the real daemon:

- 50 meters on one Modbus TCP bus, every one read every 200 ms (the line always busy), stopped
  several times at random moments;
- an RTU bus whose port refuses its line settings (termios.error at every open, injected at
  that one OS call through `sitecustomize`), next to a healthy TCP meter.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.health import Health
from drivers.config import MeterConfig
from drivers.modbus.reader import ModbusReader
from drivers.modbus.register_map import load_builtin
from drivers.modbus.transports import ModbusTcpBus
from drivers.simulator import serve_modbus_tcp
from gateway.daemon import SHUTDOWN_BUDGET_S, _cancel_and_wait
from gateway.poller import Poller
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from tests.faults.conftest import DaemonProcess, long_form, sdm630_meters, slow_proxy

RUNS = 6 if long_form() else 2
METERS = 50
#: SIGTERM to exit: the shutdown budget, plus start-up of nothing and a loaded CI box's slack.
STOP_LIMIT_S = SHUTDOWN_BUDGET_S + 4.0

SITE = """\
gateway: {{id: stop, timezone: UTC, data_dir: "{data_dir}", clock_check: none}}
buses:
  plant: {{type: modbus-tcp, host: 127.0.0.1, port: {port}, timeout_secs: 0.5}}
{extra_buses}
meters:
{meters}
"""

#: Injected into the daemon: every tcsetattr on the port named by MG_TEST_REFUSED_TTY fails as
#: a USB adapter's driver refusing a baud rate does.
SITECUSTOMIZE = """\
import os, termios
_target = os.path.realpath(os.environ["MG_TEST_REFUSED_TTY"])
_real = termios.tcsetattr
def _refusing(fd, when, attributes):
    if os.path.realpath(os.ttyname(fd)) == _target:
        raise termios.error(22, "Invalid argument")
    return _real(fd, when, attributes)
termios.tcsetattr = _refusing
"""


def _meters(count: int, bus: str = "plant", first_id: int = 1) -> list[str]:
    return [
        f"  - {{id: m{n}, bus: {bus}, unit: {n - first_id + 1}, model: sdm630, "
        "interval_secs: 200ms, offline_retry_secs: 200ms}"
        for n in range(first_id, first_id + count)
    ]


async def _stop_in_time(daemon: DaemonProcess) -> float:
    started = time.monotonic()
    code = await daemon.stop(timeout=STOP_LIMIT_S + 5)
    took = time.monotonic() - started
    assert code == 0, daemon.log_text()[-3000:]
    return took


@pytest.mark.slow
@pytest.mark.timeout(40 + 25 * RUNS)
async def test_fifty_meters_on_one_bus_stop_within_the_budget(
    tmp_path: Path,
    daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess],
    fault_seed: int,
) -> None:
    rng = random.Random(fault_seed)
    async with serve_modbus_tcp(sdm630_meters(METERS)) as modbus:
        config = tmp_path / "site.yaml"
        config.write_text(
            SITE.format(
                data_dir=tmp_path / "data",
                port=modbus.port,
                extra_buses="",
                meters="\n".join(_meters(METERS)),
            )
        )
        daemon = daemon_factory(config, {})
        for _ in range(RUNS):
            await daemon.start()
            await daemon.wait_running()
            await asyncio.sleep(rng.uniform(1.0, 2.5))
            took = await _stop_in_time(daemon)
            log = daemon.log_text()
            assert "did not stop within" not in log, log[-3000:]
            assert took < STOP_LIMIT_S, took


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_an_rtu_port_refusing_its_settings_does_not_keep_the_daemon_from_stopping(
    tmp_path: Path,
    daemon_factory: Callable[[Path, dict[str, str]], DaemonProcess],
    serial_pair: tuple[str, str],
) -> None:
    _, gateway_end = serial_pair
    site_dir = tmp_path / "site-packages"
    site_dir.mkdir()
    (site_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    rtu = f"  line: {{type: modbus-rtu, port: {gateway_end}, baudrate: 9600, timeout_secs: 0.3}}"
    async with serve_modbus_tcp(sdm630_meters(1)) as modbus:
        config = tmp_path / "site.yaml"
        config.write_text(
            SITE.format(
                data_dir=tmp_path / "data",
                port=modbus.port,
                extra_buses=rtu,
                meters="\n".join(_meters(1) + _meters(3, bus="line", first_id=2)),
            )
        )
        daemon = daemon_factory(
            config, {"PYTHONPATH": str(site_dir), "MG_TEST_REFUSED_TTY": gateway_end}
        )
        await daemon.start()
        await daemon.wait_running()
        await asyncio.sleep(2.0)
        took = await _stop_in_time(daemon)
    log = daemon.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert "did not stop within" not in log, log[-3000:]
    assert "cannot connect to modbus-rtu" in log  # the refusal was met, and reported
    assert took < STOP_LIMIT_S, took


class CancelSwallowingReader:
    """A real Modbus reader behind a library that loses a cancel, as 3.11's `wait_for` does: a
    cancel arriving mid-read is dropped and the read's result returned."""

    def __init__(self, inner: ModbusReader) -> None:
        self.inner = inner
        self.swallowed = 0
        self.reading = asyncio.Event()

    async def read(self) -> dict[str, float]:
        self.reading.set()
        try:
            return await self.inner.read()
        except asyncio.CancelledError:
            if self.swallowed:
                raise  # once is enough to show it (and lets the test clean up either way)
            self.swallowed += 1
            return await self.inner.read()

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.timeout(30)
async def test_a_poll_task_whose_cancel_a_library_swallowed_still_stops(tmp_path: Path) -> None:
    async with (
        serve_modbus_tcp(sdm630_meters(1)) as modbus,
        slow_proxy(modbus.port, 0.2) as port,
        ModbusTcpBus("plant", "127.0.0.1", port, timeout_secs=2.0) as bus,
    ):
        reader = CancelSwallowingReader(ModbusReader("m1", bus, 1, load_builtin("sdm630")))
        meter = MeterConfig(id="m1", bus="plant", model="sdm630", interval_secs=1.0)
        astore = AsyncStore(Store(tmp_path / "s.sqlite3"))
        try:
            poller = Poller([meter], {"m1": reader}, astore, Health())
            task = asyncio.get_running_loop().create_task(poller.run(), name="poller")
            await asyncio.wait_for(reader.reading.wait(), 5)
            await asyncio.sleep(0.05)  # mid-read
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_BUDGET_S / 4)
            assert reader.swallowed == 1  # the library did lose the cancel
            assert done == {task}, "the poller went on after its cancel was swallowed"
        finally:
            for _ in range(50):  # the task lost one cancel: cancel until it ends
                if task.done():
                    break
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
            await astore.aclose()


@pytest.mark.timeout(30)
async def test_the_shutdown_cancels_again_a_task_that_lost_its_cancel() -> None:
    stubborn = 0

    async def swallows_first_cancel() -> None:
        nonlocal stubborn
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            stubborn += 1  # a library lost it: the task goes on to its next wait
        await asyncio.sleep(3600)

    task = asyncio.get_running_loop().create_task(swallows_first_cancel(), name="stubborn")
    await asyncio.sleep(0)
    await _cancel_and_wait([task], 2.0)
    assert stubborn == 1 and task.done()
