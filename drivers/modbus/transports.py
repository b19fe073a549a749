"""The ways a ModbusBus reaches its meters: Modbus TCP, an RS-485 line on a local serial port,
and RTU frames through a serial-to-Ethernet converter. Each only says how to build its pymodbus
client and how to describe itself; connecting, turn-taking and failures are drivers.modbus.bus's.
Every bus takes the same reconnect and health options (`BusOptions`) besides its own.
"""

from __future__ import annotations

from typing import ClassVar, Final, Unpack

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient

from drivers.modbus.bus import BusOptions, ModbusBus

#: Above this rate the Modbus serial-line spec fixes the inter-frame gap at 1.75 ms.
_FIXED_GAP_ABOVE_BAUD: Final = 19200
_FIXED_GAP_SECS: Final = 0.00175


def character_bits(*, bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> int:
    """Bits on the wire per byte: start bit, data bits, parity bit if any, stop bits."""
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


def rtu_gap_secs(
    baudrate: int, *, bytesize: int = 8, parity: str = "N", stopbits: int = 1
) -> float:
    """The RTU inter-frame gap: 3.5 character times, fixed at 1.75 ms above 19200 baud."""
    if baudrate > _FIXED_GAP_ABOVE_BAUD:
        return _FIXED_GAP_SECS
    bits = character_bits(bytesize=bytesize, parity=parity, stopbits=stopbits)
    return 3.5 * bits / baudrate


class _TcpEndpointBus(ModbusBus):
    """A bus reached at `host:port`: one TCP connection carries the requests of all its units,
    framed as the subclass's `framing` says."""

    #: The protocol's name in `describe()`.
    protocol: ClassVar[str]

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        timeout_secs: float,
        inter_frame_gap_secs: float = 0.0,
        **options: Unpack[BusOptions],
    ) -> None:
        super().__init__(
            name, timeout_secs=timeout_secs, inter_frame_gap_secs=inter_frame_gap_secs, **options
        )
        self.host = host
        self.port = port

    def describe(self) -> str:
        return f"{self.protocol} {self.host}:{self.port}"

    def _new_client(self) -> ModbusBaseClient:
        return AsyncModbusTcpClient(
            self.host,
            port=self.port,
            framer=FramerType(self.framing),
            **self._client_options(),
        )


class ModbusTcpBus(_TcpEndpointBus):
    """One TCP endpoint (a meter or a TCP/RTU gateway); one connection for all its units."""

    protocol = "modbus-tcp"

    def __init__(
        self,
        name: str,
        host: str,
        port: int = 502,
        *,
        timeout_secs: float = 3.0,
        **options: Unpack[BusOptions],
    ) -> None:
        super().__init__(name, host, port, timeout_secs=timeout_secs, **options)


class ModbusRtuOverTcpBus(_TcpEndpointBus):
    """A serial-to-Ethernet converter in transparent mode: RTU frames (with CRC) over TCP.

    The RS-485 line behind it still carries one transaction at a time; the converter paces the
    line itself, so no gap is enforced here unless configured.
    """

    framing = "rtu"
    protocol = "modbus-rtu-over-tcp"

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        timeout_secs: float = 1.0,
        inter_frame_gap_secs: float = 0.0,
        **options: Unpack[BusOptions],
    ) -> None:
        super().__init__(
            name,
            host,
            port,
            timeout_secs=timeout_secs,
            inter_frame_gap_secs=inter_frame_gap_secs,
            **options,
        )


class ModbusRtuBus(ModbusBus):
    """One RS-485 line: one open serial port, the meters on it polled one at a time.

    `port` may be a symlink such as /dev/serial/by-id/...: it is resolved at every (re)open,
    so an adapter that comes back under another ttyUSBn is found again.
    """

    framing = "rtu"
    reconnect_on_silence = False

    def __init__(
        self,
        name: str,
        port: str,
        *,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        timeout_secs: float = 1.0,
        inter_frame_gap_secs: float | None = None,
        **options: Unpack[BusOptions],
    ) -> None:
        gap = (
            rtu_gap_secs(baudrate, bytesize=bytesize, parity=parity, stopbits=stopbits)
            if inter_frame_gap_secs is None
            else inter_frame_gap_secs
        )
        super().__init__(name, timeout_secs=timeout_secs, inter_frame_gap_secs=gap, **options)
        self.port = port
        self.baudrate = baudrate
        self.char_secs = (
            character_bits(bytesize=bytesize, parity=parity, stopbits=stopbits) / baudrate
        )
        self.parity = parity
        self.stopbits = stopbits
        self.bytesize = bytesize

    def describe(self) -> str:
        return f"modbus-rtu {self.port} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"

    def _new_client(self) -> ModbusBaseClient:
        return AsyncModbusSerialClient(
            self.port,
            framer=FramerType.RTU,
            baudrate=self.baudrate,
            parity=self.parity,
            stopbits=self.stopbits,
            bytesize=self.bytesize,
            **self._client_options(),
        )
