"""A simulated Modbus meter built from a register map, served by pymodbus' own server.

Used by the tests (real loopback TCP, real pymodbus framing) and by `meter-gateway demo`.
The device image is made FROM the register map: `set_values` takes channel values in the
gateway's units, applies the inverse scale (Wh -> kWh) and encodes per type and word order, so a
reader that decodes them back proves the map, the planner and the decoder agree end to end.
Values behind a SunSpec-style scale-factor register share that register: the simulator picks
the exponent (0, -1, 1, -2, ...) at which every value of the group is exact and fits its type,
writes it, and encodes the group with it. `sunspec_meter` builds a whole SunSpec device (SunS
marker, common model with identity strings, model chain, end marker) from drivers.modbus.sunspec's
tables, the same ones discovery reads it with.

Like a real meter, the simulated one answers any read inside the address span its map (and any
raw words put with `set_words` before the server starts) covers, unused registers reading as 0,
except `forbidden` ranges and addresses outside that span, which get exception 2 (illegal data
address). A map's `identity` registers (drivers/identity.py) answer, when read on their own,
with the first value the map lists for them (`set_identity` picks another), as a real device
of that model does; `set_words` at such an address makes a device of another model.
Faults for tests: `unresponsive` (requests are swallowed), `exception_code` (every
request answers that exception), `garbage` (every register reads 0xFFFF, a float32 NaN),
`refused` (registers a variant lacks: any read touching one answers exception 2).

Only the simulated unit ids answer. Any other unit id gets what a real installation gives
(`absent_units`): over TCP by default what an RS-485-to-TCP gateway answers for an empty
address, exception 0x0B ("gateway target device failed to respond"), or 0x0A ("gateway path
unavailable") with `absent_units="gateway-path"`; on a serial line, or with
`absent_units="silent"`, no answer at all. (pymodbus' own simulator answers exception 4 for
every unit id it does not know, which `scan` would list as a device.)
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final, Literal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.base import ModbusBaseServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus import sunspec
from drivers.modbus.decode import decode_value, encode_scale_factor, encode_value
from drivers.modbus.register_map import RegisterMap, RegisterSpec, ScaleRegister

_TABLE_OF_FUNCTION = {3: "holding", 4: "input"}
#: Exponents tried for a scale-factor group, most natural first.
_EXPONENTS: Final = (0, *itertools.chain.from_iterable((-n, n) for n in range(1, 11)))
_NAN_WORDS: Final = {2: [0x7FC0, 0x0000], 4: [0x7FF8, 0x0000, 0x0000, 0x0000]}
#: Identity a simulated SunSpec device reports in its common model.
SUNSPEC_IDENTITY: Final = {
    "manufacturer": "Simulated",
    "model": "SunSpec device",
    "version": "1.0",
    "serial": "SIM-0001",
}


@dataclass
class SimulatedMeter:
    """One unit id's worth of registers, with fault switches and a request counter."""

    register_map: RegisterMap
    unit_id: int = 1
    #: Swallow requests (the server sends no answer): the client sees a timeout.
    unresponsive: bool = False
    #: Answer every request with this Modbus exception (e.g. ExcCodes.DEVICE_FAILURE).
    exception_code: ExcCodes | None = None
    #: Answer every read with 0xFFFF words (NaN as float32).
    garbage: bool = False
    #: (table, address) of registers this variant lacks: a read touching one answers
    #: exception 2 (illegal data address), as an EM24 without kWh(-) does.
    refused: set[tuple[str, int]] = field(default_factory=set)
    #: Valid read requests that reached this unit / that it answered with data.
    requests_seen: int = 0
    requests_served: int = 0
    #: (table, address, count) of every request answered with data, in order.
    served: list[tuple[str, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._image: dict[str, dict[int, int]] = {"input": {}, "holding": {}}
        self._values: dict[str, float] = {}
        self._demo: _DemoState | None = None
        #: (table, address, count) -> words, served to a read of exactly that block.
        self._identity: dict[tuple[str, int, int], list[int]] = {
            (check.table, check.address, check.count): check.encode()
            for check in self.register_map.identity
        }
        #: Exponent last written to each scale-factor register.
        self.exponents: dict[ScaleRegister, int] = {}

    @property
    def values(self) -> dict[str, float]:
        """The channel values last set (normalised units)."""
        return dict(self._values)

    def set_values(self, values: Mapping[str, float]) -> None:
        """Set channels in the gateway's units; unknown channels are an error (strict fake).

        Values sharing a scale-factor register are re-encoded together with one exponent at
        which each is exact (or, for values no exponent holds exactly, the finest that fits).
        """
        specs = {channel: self._spec(channel) for channel in values}
        rescale: set[ScaleRegister] = set()
        for channel, value in values.items():
            spec = specs[channel]
            self._values[channel] = float(value)
            if spec.scale_register is None:
                self._put(spec, encode_value(value, spec))
            else:
                rescale.add(spec.scale_register)
        for ref in rescale:
            self._rescale(ref)

    def set_unavailable(self, *channels: str) -> None:
        """Make channels read as "not implemented": their map's sentinel, or NaN for floats."""
        for channel in channels:
            spec = self._spec(channel)
            if spec.unavailable is not None:
                data = spec.unavailable.to_bytes(2 * spec.words, "big")
                words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
            elif spec.type in ("f32", "f64"):
                words = _NAN_WORDS[spec.words]
            else:
                raise ValueError(f"{channel} has no way to read as not available")
            self._put(spec, words)
            self._values.pop(channel, None)

    def set_words(self, table: str, address: int, words: Sequence[int]) -> None:
        """Put raw registers in the image (e.g. a NaN in one register only)."""
        for offset, word in enumerate(words):
            self._image[table][address + offset] = word & 0xFFFF

    def set_identity(self, index: int, value: int | str) -> None:
        """Answer identity check `index` of the map with `value` (another model's code)."""
        check = self.register_map.identity[index]
        self._identity[(check.table, check.address, check.count)] = check.encode(value)

    def words(self, table: str, address: int, count: int) -> list[int]:
        """What the device holds at [address, address + count) (unset registers read 0)."""
        return [self._image[table].get(address + offset, 0) for offset in range(count)]

    def reset_counters(self) -> None:
        self.requests_seen = self.requests_served = 0
        self.served.clear()

    def sim_device(self) -> SimDevice:
        """The pymodbus datastore for this meter (separate holding and input tables)."""
        bits = [SimData(0, values=0, datatype=DataType.BITS)]
        return SimDevice(
            id=self.unit_id,
            simdata=(bits, list(bits), self._table_layout("holding"), self._table_layout("input")),
            action=self._action,
        )

    def tick(self, now: float) -> None:
        """Demo: move values like a small building would (now = UNIX seconds).

        Voltages wander around 230 V, load follows the hour of day, energy counters grow by
        power x elapsed time. Only channels the map has are set.
        """
        if self._demo is None:
            self._demo = _DemoState(self.unit_id, now)
        candidates = self._demo.advance(now)
        self.set_values({k: v for k, v in candidates.items() if k in self._channels})

    @property
    def _channels(self) -> set[str]:
        return set(self.register_map.channels())

    def _spec(self, channel: str) -> RegisterSpec:
        return self.register_map.register(channel)

    def _put(self, spec: RegisterSpec, words: Sequence[int]) -> None:
        self.set_words(spec.table, spec.address, words)

    def _rescale(self, ref: ScaleRegister) -> None:
        members = [
            (spec, self._values[spec.channel])
            for spec in self.register_map.registers
            if spec.scale_register == ref and spec.channel in self._values
        ]
        exponent = choose_exponent(members)
        self.exponents[ref] = exponent
        self.set_words(ref.table, ref.address, [encode_scale_factor(exponent)])
        for spec, value in members:
            self._put(spec, encode_value(value, spec, exponent))

    def _table_layout(self, table: str) -> list[SimData]:
        needed = self.register_map.registers_to_read()
        spans = [(r.address, r.end) for r in needed if r.table == table]
        spans += [(address, address + 1) for address in self._image[table]]
        if not spans:
            islands = self._identity_layout(table, 0x10000, 0x10000)
            return islands or [SimData(0, datatype=DataType.INVALID)]
        first = min(start for start, _ in spans)
        end = max(stop for _, stop in spans)
        holes = sorted(
            (max(h.first, first), min(h.last + 1, end))
            for h in self.register_map.forbidden
            if h.table == table and h.first < end and h.last >= first
        )
        layout = []
        start = first
        for hole_start, hole_end in holes:
            if hole_start > start:
                layout.append(_zeros(start, hole_start))
            start = max(start, hole_end)
        if start < end:
            layout.append(_zeros(start, end))
        return sorted(layout + self._identity_layout(table, first, end), key=lambda d: d.address)

    def _identity_layout(self, table: str, first: int, end: int) -> list[SimData]:
        """Identity registers outside the value span, each its own island (reads between
        them and the values still answer exception 2, like the device)."""
        islands = sorted(
            (address, address + count)
            for (where, address, count) in self._identity
            if where == table and (address + count <= first or address >= end)
        )
        merged: list[list[int]] = []
        for start, stop in islands:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], stop)
            else:
                merged.append([start, stop])
        return [_zeros(start, stop) for start, stop in merged]

    async def _action(  # noqa: PLR0917 (pymodbus calls it positionally)
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Called by pymodbus for every valid request: copy our image into its registers."""
        self.requests_seen += 1
        table = _TABLE_OF_FUNCTION.get(function_code)
        if table is None or set_values:
            return ExcCodes.ILLEGAL_FUNCTION  # a meter's measurements are read-only
        if self.exception_code is not None:
            return self.exception_code
        if any((table, address + offset) in self.refused for offset in range(count)):
            return ExcCodes.ILLEGAL_ADDRESS
        image = self._image[table]
        identity = self._identity.get((table, address, count))
        for offset in range(count):
            if self.garbage:
                word = 0xFFFF
            elif identity is not None:  # a read of exactly an identity block
                word = identity[offset]
            else:
                word = image.get(address + offset, 0)
            current_registers[address - start_address + offset] = word
        if not self.unresponsive:
            self.requests_served += 1
            self.served.append((table, address, count))
        return None


def _zeros(start: int, end: int) -> SimData:
    return SimData(start, count=end - start, values=0, datatype=DataType.REGISTERS)


def choose_exponent(members: Iterable[tuple[RegisterSpec, float]]) -> int:
    """The scale factor for values sharing one register: exact for all if possible.

    Otherwise the finest exponent at which every value fits its type (the demo's arbitrary
    floats); ValueError when even 10**10 cannot hold them.
    """
    group = list(members)
    fitting: list[int] = []
    for exponent in _EXPONENTS:
        try:
            encoded = [(spec, value, encode_value(value, spec, exponent)) for spec, value in group]
        except ValueError:
            continue
        if all(decode_value(words, spec, exponent) == value for spec, value, words in encoded):
            return exponent
        fitting.append(exponent)
    if not fitting:
        channels = ", ".join(spec.channel for spec, _ in group)
        raise ValueError(f"no scale factor in -10..10 holds the values of {channels}")
    return min(fitting)


def sunspec_meter(
    models: Sequence[int | tuple[int, int]] = (103,),
    *,
    unit_id: int = 1,
    base: int = 40000,
    identity: Mapping[str, str] | None = None,
    mapped: Iterable[int] | None = None,
    end_marker: bool = True,
) -> SimulatedMeter:
    """A SunSpec device: SunS at `base`, common model, then `models` (ids, or (id, length) for
    models we do not map) in order, every data register present.

    Its register map is what discovery builds for that chain (restricted to `mapped` model ids
    if given), so `set_values` works in channels. Without `end_marker` the chain just stops,
    as on some real devices (reading past it answers exception 2).
    """
    chain = sunspec.chain_layout(models, base=base)
    ident = dict(SUNSPEC_IDENTITY if identity is None else identity)
    device = sunspec.SunSpecDevice(base, chain, ident)
    wanted = None if mapped is None else frozenset(mapped)
    meter = SimulatedMeter(sunspec.build_register_map(device, model_ids=wanted), unit_id=unit_id)
    meter.set_words("holding", base, sunspec.SUNS_MARKER)
    for model in chain:
        meter.set_words("holding", model.address, [model.id, model.length])
        for offset in range(model.length):  # every data register exists (reads as 0)
            meter.set_words("holding", model.data + offset, [0])
    common = chain[0]
    for name, (offset, length) in sunspec.COMMON_STRINGS.items():
        meter.set_words(
            "holding", common.data + offset, sunspec.encode_string(ident.get(name, ""), length)
        )
    if end_marker:
        last = chain[-1]
        meter.set_words("holding", last.data + last.length, [sunspec.END_OF_CHAIN, 0])
    return meter


#: pymodbus hands a request for a unit id it has no device for to device 0.
_CATCH_ALL: Final = 0
#: Registers of the catch-all device: any address reaches its action.
_WHOLE_TABLE: Final = 0x10000


#: What a TCP gateway answers for a unit id nobody has: 0x0B "gateway target device failed to
#: respond" (most), or 0x0A "gateway path unavailable" (some, e.g. when no route is set up).
_ABSENT_ANSWER: Final = {
    "gateway": ExcCodes.GATEWAY_NO_RESPONSE,
    "gateway-path": ExcCodes.GATEWAY_PATH_UNAVIABLE,
}


def _catch_all_device(answer: ExcCodes) -> SimDevice:
    async def absent(  # noqa: PLR0917 (pymodbus calls it positionally)
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes:
        """A unit nobody simulates: the gateway's exception for "no such target"."""
        return answer

    bits = [SimData(0, values=0, datatype=DataType.BITS)]
    table = [_zeros(0, _WHOLE_TABLE)]
    return SimDevice(id=_CATCH_ALL, simdata=(bits, list(bits), table, list(table)), action=absent)


class SimulatorServer:
    """A pymodbus server for some SimulatedMeters; stop() and start() again at will."""

    def __init__(
        self,
        meters: Sequence[SimulatedMeter],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        serial_port: str | None = None,
        baudrate: int = 9600,
        absent_units: Literal["gateway", "gateway-path", "silent"] | None = None,
    ) -> None:
        ids = [m.unit_id for m in meters]
        if len(set(ids)) != len(ids) or _CATCH_ALL in ids:
            raise ValueError(f"unit ids must be unique and 1..247, got {ids}")
        self.meters = {m.unit_id: m for m in meters}
        self.host = host
        self.port = port
        self.serial_port = serial_port
        self.baudrate = baudrate
        #: What a unit id nobody simulates gets (see the module docstring).
        self.absent_units = absent_units or ("silent" if serial_port else "gateway")
        self._server: ModbusBaseServer | None = None
        #: Client connections accepted so far / open now.
        self.connections = 0
        self.open_connections = 0

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            return
        devices = [m.sim_device() for m in self.meters.values()] + [
            _catch_all_device(_ABSENT_ANSWER.get(self.absent_units, ExcCodes.GATEWAY_NO_RESPONSE))
        ]
        server: ModbusBaseServer
        if self.serial_port is not None:
            server = ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=self.serial_port,
                baudrate=self.baudrate,
                trace_packet=self._trace_packet,
            )
        else:
            server = ModbusTcpServer(
                devices,
                address=(self.host, self.port),
                trace_packet=self._trace_packet,
                trace_connect=self._trace_connect,
            )
        await server.serve_forever(background=True)
        self._server = server
        if self.serial_port is None and self.port == 0:
            self.port = int(server.transport.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """Close the listener and every client connection (clients see the line drop)."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]
            if ModbusBaseServer.active_server is server:
                ModbusBaseServer.active_server = None

    def _trace_connect(self, connected: bool) -> None:
        if connected:
            self.connections += 1
            self.open_connections += 1
        else:
            self.open_connections = max(0, self.open_connections - 1)

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """Swallow answers of unresponsive and (silent) absent units (for every frame sent)."""
        if not sending or not data:
            return data
        unit = data[0] if self.serial_port is not None else (data[6] if len(data) > 6 else -1)
        meter = self.meters.get(unit)
        if meter is None and self.absent_units == "silent":
            return b""
        if meter is not None and meter.unresponsive:
            return b""
        return data


@asynccontextmanager
async def serve_modbus_tcp(
    meters: Sequence[SimulatedMeter], host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[SimulatorServer]:
    """Serve `meters` over Modbus TCP on host:port (0: any free port, see `.port`)."""
    server = SimulatorServer(meters, host=host, port=port)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class _DemoState:
    """A plausible three-phase site: daily load profile, some noise, PV export at midday."""

    def __init__(self, seed: int, now: float) -> None:
        self.random = random.Random(seed)
        self.last = now
        self.active_import = 1_250_000.0  # Wh
        self.active_export = 310_000.0
        self.reactive_import = 95_000.0  # varh
        self.reactive_export = 12_000.0
        self.phase_import = [410_000.0, 430_000.0, 410_000.0]

    def advance(self, now: float) -> dict[str, float]:
        hours = max(0.0, now - self.last) / 3600
        self.last = now
        hour = (now % 86400) / 3600
        load = 2500 + 1500 * math.sin((hour - 8) / 24 * 2 * math.pi)
        pv = 4000 * math.sin((hour - 6) / 12 * math.pi) if 6 <= hour <= 18 else 0.0
        values: dict[str, float] = {}
        p_total = q_total = s_total = 0.0
        for index, phase in enumerate(("l1", "l2", "l3")):
            voltage = 230 + 3 * math.sin(now / 600 + index) + self.random.uniform(-0.5, 0.5)
            p = (load - pv) / 3 * self.random.uniform(0.9, 1.1)
            pf = 0.95 if p >= 0 else -0.97
            s = abs(p / pf)
            q = math.copysign(math.sqrt(max(s * s - p * p, 0.0)), p)
            if p > 0:
                self.phase_import[index] += p * hours
            values |= {
                f"voltage_{phase}": voltage,
                f"current_{phase}": s / voltage,
                f"power_active_{phase}": p,
                f"power_reactive_{phase}": q,
                f"power_apparent_{phase}": s,
                f"power_factor_{phase}": pf,
                f"energy_active_import_{phase}": self.phase_import[index],
            }
            p_total, q_total, s_total = p_total + p, q_total + q, s_total + s
        if p_total > 0:
            self.active_import += p_total * hours
            self.reactive_import += abs(q_total) * hours
        else:
            self.active_export -= p_total * hours
            self.reactive_export += abs(q_total) * hours
        v1, v2, v3 = (values[f"voltage_{p}"] for p in ("l1", "l2", "l3"))
        return values | {
            "voltage_l1_l2": math.sqrt(3) * (v1 + v2) / 2,
            "voltage_l2_l3": math.sqrt(3) * (v2 + v3) / 2,
            "voltage_l3_l1": math.sqrt(3) * (v3 + v1) / 2,
            "current_n": abs(values["current_l1"] - values["current_l2"]) / 2,
            "power_active": p_total,
            "power_reactive": q_total,
            "power_apparent": s_total,
            "power_factor": p_total / s_total if s_total else 1.0,
            "frequency": 50 + self.random.uniform(-0.03, 0.03),
            "energy_active_import": self.active_import,
            "energy_active_export": self.active_export,
            "energy_active_total": self.active_import + self.active_export,
            "energy_reactive_import": self.reactive_import,
            "energy_reactive_export": self.reactive_export,
            "energy_reactive_total": self.reactive_import + self.reactive_export,
        }
