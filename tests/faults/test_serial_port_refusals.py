"""A serial port that refuses its line settings (`termios.error`, which is not an OSError).

A USB-RS485 adapter whose driver refuses a baud rate or parity answers `tcsetattr` with EINVAL,
which pyserial raises as `termios.error`. The refusal is injected at that one OS call, for the
one port, on a real socat pty with a real simulated meter behind it. The error escaped the RTU
client's connect (pymodbus catches only OSError there), so the bus neither counted it nor
backed off, and the reader's caller got an exception it does not expect.

The bus must report a connection failure (counted, retried with backoff), never let the error
escape, release the port, and read again once the port accepts its settings.
"""

from __future__ import annotations

import os
import termios
from collections.abc import Iterator
from typing import Any

import pytest

from drivers.base import MeterReadError
from drivers.modbus.reader import ModbusReader
from drivers.modbus.register_map import load_builtin
from drivers.modbus.transports import ModbusRtuBus
from tests.fakes.modbus_device import SimulatedMeter, SimulatorServer
from tests.fixtures.modbus import SDM630_VALUES
from tests.helpers.eventually import eventually

SDM630 = load_builtin("sdm630")


class RefusingPort:
    """`termios.tcsetattr` refused (EINVAL) for one port: from call `after` on, while `on`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: str, *, after: int) -> None:
        self.target = os.path.realpath(path)
        self.after = after
        self.calls = 0
        self.refused = 0
        self.on = True
        real = termios.tcsetattr

        def tcsetattr(fd: int, when: int, attributes: Any) -> None:
            if os.path.realpath(os.ttyname(fd)) == self.target:
                self.calls += 1
                if self.on and self.calls > self.after:
                    self.refused += 1
                    raise termios.error(22, "Invalid argument")
            real(fd, when, attributes)

        monkeypatch.setattr(termios, "tcsetattr", tcsetattr)


@pytest.fixture
def meter_on_line(serial_pair: tuple[str, str]) -> Iterator[tuple[SimulatedMeter, str, str]]:
    meter = SimulatedMeter(SDM630, unit_id=1)
    meter.set_values(SDM630_VALUES)
    device_end, gateway_end = serial_pair
    yield meter, device_end, gateway_end


@pytest.mark.timeout(30)
async def test_a_port_refusing_its_line_settings_is_a_connection_error_and_is_released(
    meter_on_line: tuple[SimulatedMeter, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    meter, device_end, gateway_end = meter_on_line
    server = SimulatorServer([meter], serial_port=device_end, baudrate=9600)
    await server.start()
    refusing = RefusingPort(monkeypatch, gateway_end, after=0)
    try:
        async with ModbusRtuBus(
            "rs485", gateway_end, baudrate=9600, timeout_secs=0.5, reconnect_initial_secs=0.05
        ) as bus:
            reader = ModbusReader("incomer", bus, 1, SDM630)

            async def refused_three_times() -> bool:
                with pytest.raises(MeterReadError) as caught:  # never termios.error
                    await reader.read()
                assert caught.value.kind == "connection"
                return refusing.refused >= 3

            await eventually(refused_three_times, timeout=5, what="three refused opens")
            assert bus.health.errors["connection"] >= 3
            refusing.on = False  # the adapter accepts its settings now (replugged, fixed)
            # "Could not exclusively lock port" for ever here: the refused open leaked the port
            values = await eventually(
                reader.read, timeout=5, retry_on=(MeterReadError,), what="a read again"
            )
            assert values == SDM630_VALUES
    finally:
        await server.stop()
