"""Modbus timing: RTU cycle time of 2 and 8 SDM630 at 9600 baud vs the wire, CPU per TCP read,
and what TCP pipelining gains behind a gateway that queues requests.

RTU method. A socat pty pair carries the line, pymodbus' serial server simulates two SDM630
(units 1 and 2) on the far end. ptys do not emulate a baud rate: bytes arrive at once. So the
measured cycle on the pty is what a real line adds on top of its bytes — our overhead
(request building, decoding, scheduling, the lock) plus the simulator's turnaround, plus the
inter-frame gap we deliberately keep (the bus's pacing to the baud rate, which on a pty would
hide our time inside the wait for the wire, is switched off here; tests/drivers/modbus/
test_modbus_rtu.py proves the pacing). We compute:

    wire   = sum over transactions of (request + response bytes) x 11 bits / baud
             + 2 gaps of 3.5 characters (11 bits each) per transaction
             (device turnaround before the answer, silence before the next request)
    extra  = measured pty cycle - the gaps we sleep on purpose (already in `wire`)
    ratio  = (wire + extra) / wire          target <= 1.15

`extra` keeps the simulator's turnaround although `wire` already allows 3.5 characters for
the device's: the ratio errs on the slow side. An SDM630 read is 3 requests (80, 26 and 10
registers): 8-byte requests, 5 + 2 x count byte answers.

TCP method. The simulated SDM630 runs in a child process (`python -m bench.modbus_timing
serve PORT`) so that this process' CPU time (time.process_time) counts only the gateway side:
1000 whole reads (3 transactions each) over one loopback connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from drivers.modbus.planner import plan_map
from drivers.modbus.reader import ModbusReader
from drivers.modbus.register_map import load_builtin
from drivers.modbus.transports import ModbusRtuBus, ModbusTcpBus
from drivers.simulator import SimulatedMeter, SimulatorServer, serve_modbus_tcp

BAUD: Final = 9600
#: The issue's wire model: 11 bits per character (start, 8 data, parity or 2nd stop, stop).
BITS_PER_CHAR: Final = 11
REQUEST_BYTES: Final = 8  # unit, function, address (2), count (2), CRC (2)
START: Final = 1_800_000_000.0


def wire_time(counts: list[int], baud: int = BAUD) -> float:
    """Seconds a real line needs for these read transactions (register counts), gaps included."""
    chars = sum(REQUEST_BYTES + 5 + 2 * count for count in counts)
    gaps = 2 * 3.5 * len(counts)
    return (chars + gaps) * BITS_PER_CHAR / baud


def _meters(units: int = 2) -> list[SimulatedMeter]:
    sdm630 = load_builtin("sdm630")
    meters = [SimulatedMeter(sdm630, unit_id=unit) for unit in range(1, units + 1)]
    for meter in meters:
        meter.tick(START)
    return meters


async def measure_rtu(cycles: int = 20, units: int = 2) -> dict[str, float]:
    """`units` SDM630 on one 9600-baud line over a socat pty pair (see the module docstring)."""
    from tests.fixtures.socat import PtyPair

    sdm630 = load_builtin("sdm630")
    counts = [request.count for request in plan_map(sdm630)] * units
    with tempfile.TemporaryDirectory() as directory:
        async with PtyPair(Path(directory)) as pair:
            server = SimulatorServer(_meters(units), serial_port=pair.device, baudrate=BAUD)
            await server.start()
            try:
                async with ModbusRtuBus("rs485", pair.gateway, baudrate=BAUD) as bus:
                    # Not paced to the baud rate here: on a pty our own time would hide in the
                    # wait for the wire; unpaced, the pty cycle is our overhead plus the gaps.
                    bus.char_secs = 0.0
                    unit_ids = range(1, units + 1)
                    readers = [ModbusReader(f"m{u}", bus, u, sdm630) for u in unit_ids]
                    for reader in readers:  # warm up: open the port, first decode
                        await reader.read()
                    started = time.perf_counter()
                    for _ in range(cycles):
                        for reader in readers:
                            await reader.read()
                    pty_cycle = (time.perf_counter() - started) / cycles
                    gap = bus.inter_frame_gap_secs
            finally:
                await server.stop()
    wire = wire_time(counts)
    extra = max(0.0, pty_cycle - gap * len(counts))
    return {
        "transactions_per_cycle": len(counts),
        "wire_s": wire,
        "pty_cycle_s": pty_cycle,
        "extra_s": extra,
        "ratio": (wire + extra) / wire,
    }


async def measure_tcp_cpu(reads: int = 1000) -> dict[str, float]:
    """CPU seconds of this process for `reads` whole SDM630 reads over loopback TCP."""
    from tests.fixtures.network import free_port

    port = free_port()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.modbus_timing",
        "serve",
        str(port),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(10):
            await child.stdout.readline()  # "ready"
        sdm630 = load_builtin("sdm630")
        async with ModbusTcpBus("plant", "127.0.0.1", port, timeout_secs=3) as bus:
            reader = ModbusReader("incomer", bus, 1, sdm630)
            await reader.read()
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(reads):
                await reader.read()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        child.terminate()
        await child.wait()
    return {"cpu_s_per_1000": cpu * 1000 / reads, "reads_per_s": reads / wall}


async def _serve(port: int) -> None:
    async with serve_modbus_tcp(_meters()[:1], port=port):
        print("ready", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(int(sys.argv[2])))
    else:
        print(asyncio.run(measure_rtu()))
        print(asyncio.run(measure_tcp_cpu()))


async def measure_pipelining(meters: int = 50, cycles: int = 5) -> dict[str, float]:
    """Seconds to read `meters` SDM630s once behind one queueing gateway (tests.fakes.
    modbus_queueing: it gathers what arrives within 2 ms, then answers), one transaction at a
    time (max_in_flight 1, the pymodbus path) vs 4 outstanding (drivers.modbus.pipelined)."""
    from drivers.modbus.pipelined import PipelinedTcpBus
    from tests.fakes.modbus_queueing import QueueingGateway

    sdm630 = load_builtin("sdm630")
    simulated = [SimulatedMeter(sdm630, unit_id=unit) for unit in range(1, meters + 1)]
    figures: dict[str, float] = {}
    async with QueueingGateway(simulated, hold_secs=0.002) as gateway:
        for in_flight in (1, 4):
            bus: ModbusTcpBus = (
                ModbusTcpBus("gw", "127.0.0.1", gateway.port)
                if in_flight == 1
                else PipelinedTcpBus("gw", "127.0.0.1", gateway.port, max_in_flight=in_flight)
            )
            async with bus:
                readers = [ModbusReader(f"m{u}", bus, u, sdm630) for u in range(1, meters + 1)]
                await asyncio.gather(*(reader.read() for reader in readers))
                started = time.perf_counter()
                for _ in range(cycles):
                    await asyncio.gather(*(reader.read() for reader in readers))
                figures[f"cycle_s_{in_flight}"] = (time.perf_counter() - started) / cycles
    figures["gain"] = figures["cycle_s_1"] / figures["cycle_s_4"]
    return figures
