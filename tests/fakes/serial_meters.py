"""Simulated serial utility meters on the device end of a socat pty pair.

`PtyDevice` is the meter's end of the line: raw bytes in and out (a pty has no baud rate, so
tests check the protocol exchange, not the electrical rate). `D0Meter` answers IEC 62056-21
sign-ons the way a real meter does and records what the gateway sent; P1 and SML meters just
push telegram bytes, so tests write them with `PtyDevice.write`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

STX, ETX, ACK = 0x02, 0x03, 0x06


class PtyDevice:
    """One end of a pty pair, opened raw and non-blocking, read by the event loop."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._buffer = bytearray()
        self._arrived = asyncio.Event()
        self.closed_by_peer = False

    async def __aenter__(self) -> Self:
        fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd)
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._readable)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:  # EIO: the other end (socat) went away
            data = b""
        if not data:
            self.closed_by_peer = True
            asyncio.get_running_loop().remove_reader(self._fd)
        self._buffer += data
        self._arrived.set()

    async def write(self, data: bytes, *, chunk: int = 0, pause: float = 0.0) -> None:
        """Send `data`, optionally in chunks of `chunk` bytes with `pause` between them."""
        assert self._fd is not None
        pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
        for piece in pieces:
            view = memoryview(piece)
            while view:
                try:
                    written = os.write(self._fd, view)
                except BlockingIOError:
                    await asyncio.sleep(0.001)
                    continue
                view = view[written:]
            if pause:
                await asyncio.sleep(pause)

    async def read_until(self, end: Callable[[bytearray], int], timeout: float = 2.0) -> bytes:
        """Bytes up to the index `end` returns (-1: not yet), waiting at most `timeout`."""
        async with asyncio.timeout(timeout):
            while (index := end(self._buffer)) < 0:
                self._arrived.clear()
                await self._arrived.wait()
        data = bytes(self._buffer[:index])
        del self._buffer[:index]
        return data

    def received(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


def line_end(data: bytearray) -> int:
    index = data.find(b"\r\n")
    return -1 if index < 0 else index + 2


def bcc(data: bytes) -> int:
    value = 0
    for byte in data:
        value ^= byte
    return value


def data_message(block: str, *, corrupt_bcc: bool = False) -> bytes:
    """STX block ! CR LF ETX BCC, as a meter sends its readout."""
    body = block.encode("ascii") + b"!\r\n" + bytes([ETX])
    check = bcc(body) ^ (0xFF if corrupt_bcc else 0)
    return bytes([STX]) + body + bytes([check])


@dataclass
class D0Meter:
    """A meter answering IEC 62056-21 sign-ons on a `PtyDevice`.

    `identification` is sent after a sign-on addressed to it (or to anyone); in mode C the
    meter then waits for the acknowledgement and records the baud character it carries.
    """

    device: PtyDevice
    identification: bytes
    block: str
    address: str | None = None
    #: Sent before the identification (an echo with line noise, as an ACE3000 answers).
    preamble: bytes = b""
    #: The data message exactly as a real meter sent it (instead of one built from `block`).
    message: bytes | None = None
    #: Reaction time before each answer (the standard: 200 ms..1.5 s; kept short in tests).
    reaction_secs: float = 0.02
    echo: bool = False
    corrupt_bcc: bool = False
    #: Send only this many bytes of the data message, then fall silent (a broken readout).
    cut_after: int | None = None
    silent: bool = False
    #: Mode C: acknowledge a switch to another rate, then fall silent (a head or converter
    #: that cannot follow); an acknowledgement of the sign-on rate ("0") is served normally.
    switch_fails: bool = False
    #: Send the data message in 16-byte pieces this far apart (a slow line).
    piece_pause_secs: float = 0.0
    #: Asked at each step for the gateway port's current baud rate (the test can see the
    #: other end's settings, which a pty does not enforce): recorded in `rates`.
    gateway_baudrate: Callable[[], int] | None = None
    rates: list[tuple[str, int]] = field(default_factory=list)
    sign_ons: list[bytes] = field(default_factory=list)
    acks: list[bytes] = field(default_factory=list)
    breaks: int = 0
    readouts: int = 0

    @property
    def mode(self) -> str:
        z = chr(self.identification[4])
        return "C" if z.isdigit() else "B" if z in "ABCDEF" else "A"

    async def serve(self) -> None:
        while True:
            line = await self.device.read_until(line_end, timeout=3600)
            if line.startswith(b"\x01B0\x03"):
                self.breaks += 1
                line = line[5:]
            if not line.startswith(b"/?") or not line.endswith(b"!\r\n"):
                continue
            self.sign_ons.append(line)
            self._note_rate("sign-on")
            if self.echo:
                await self.device.write(line)
            requested = line[2:-3].decode("ascii")
            if self.silent or (requested and requested != self.address):
                continue
            await asyncio.sleep(self.reaction_secs)
            await self.device.write(self.preamble + self.identification)
            if self.mode == "C":
                ack = await self.device.read_until(line_end)
                if self.echo:
                    await self.device.write(ack)
                self.acks.append(ack)
                if self.switch_fails and ack[2:3] != b"0":
                    continue
            await asyncio.sleep(self.reaction_secs)
            self._note_rate("data")
            message = self.message or data_message(self.block, corrupt_bcc=self.corrupt_bcc)
            if self.cut_after is not None:
                message = message[: self.cut_after]
            if self.piece_pause_secs:
                await self.device.write(message, chunk=16, pause=self.piece_pause_secs)
            else:
                await self.device.write(message)
            self.readouts += 1

    def _note_rate(self, step: str) -> None:
        if self.gateway_baudrate is not None:
            self.rates.append((step, self.gateway_baudrate()))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Self]:
        task = asyncio.create_task(self.serve(), name="d0-meter")
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.wait([task])
