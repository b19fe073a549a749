"""SunSpec: find a device's model chain once, then read it as an ordinary register map.

SunSpec is a standard layout, so its knowledge lives here as tables (point offsets from the
SunSpec Alliance model definitions, github.com/sunspec/models json/model_*.json), not in a
vendor YAML file. Discovery:

1. The `SunS` marker (0x5375 0x6E53) is looked for at holding 40000, then 0, then 50000. An
   exception answer (no such address) means "not here"; a timeout or lost connection is a
   read failure and propagates (the caller retries discovery at its next read).
2. From marker + 2, models follow as [ID, L, L data registers] until ID 0xFFFF. Some devices
   omit the end marker and answer the read after the last model with an exception: that ends
   the chain too (once at least one model was found).
3. Model 1 (common) gives manufacturer, model, version and serial for identification.
4. The first model we can map (inverter 101-103 int+SF, 111-113 float; meter 201-204 int+SF)
   becomes a `RegisterMap` with scale-factor registers, so the planner and reader need nothing
   SunSpec-specific. "Not implemented" values (0xFFFF u16, 0x8000 s16 and scale factors, NaN)
   leave the channel out when it is optional: whatever the model's definition does not make
   mandatory (phases B/C of model 101, PhVphA of a 201 or a delta 204, AphA of a 202, VA/var/PF).

Channel meaning: an inverter's lifetime AC energy (WH) is energy it delivered, so it feeds
`energy_active_export`; a meter's TotWhImp/TotWhExp feed import/export as the meter counts them.
Power factor is a percentage in SunSpec (units Pct) and is scaled to a ratio (x0.01).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from drivers.base import MeterReadError
from drivers.modbus.register_map import RegisterMap

#: "SunS" as two registers.
SUNS_MARKER: Final = (0x5375, 0x6E53)
#: Where the marker may be, in the order SunSpec says to look.
BASE_ADDRESSES: Final = (40000, 0, 50000)
END_OF_CHAIN: Final = 0xFFFF
COMMON_MODEL: Final = 1
#: Guard against a device whose chain never ends (garbage lengths looping the address space).
MAX_MODELS: Final = 64
#: Reads of one request; a SunSpec device must accept the Modbus maximum.
MAX_REGISTERS: Final = 125

ReadHolding = Callable[[int, int], Awaitable[list[int]]]


class SunSpecError(MeterReadError):
    """The device is not (usable as) a SunSpec device; counted like any failed read."""

    def __init__(self, message: str) -> None:
        super().__init__("garbage", message)


@dataclass(frozen=True)
class Point:
    """One SunSpec point we map: offset from the first data register of its model."""

    name: str
    offset: int
    #: Our register type: u16, s16, u32 (acc32), f32.
    type: str
    channel: str
    #: Name of the scale-factor point (int models), None for float models.
    sf: str | None = None
    #: Fixed multiplier on top of the scale factor (Pct -> ratio: 0.01).
    scale: float = 1.0
    unit: str = ""


@dataclass(frozen=True)
class Family:
    """Models sharing one layout (101/102/103 differ only in which phases are implemented)."""

    name: str
    ids: frozenset[int]
    #: The model length (L) the layout needs; a shorter model is not used.
    length: int
    points: tuple[Point, ...]
    scale_factors: dict[str, int]
    #: Per model id: the points and scale factors (of ours) its definition makes mandatory
    #: (`"mandatory": "M"` in the SunSpec model JSON, as pysunspec2 ships it). Any other may
    #: answer "not implemented" on a compliant device, and so does a value whose scale factor
    #: is not mandatory: both are optional in the map (a test compares with pysunspec2).
    mandatory: dict[int, frozenset[str]]

    def optional(self, model_id: int, point: Point) -> bool:
        must = self.mandatory[model_id]
        return point.name not in must or (point.sf is not None and point.sf not in must)


#: "Not implemented" per SunSpec type (acc32 uses 0, which is also a real count: not checked).
_NOT_IMPLEMENTED: Final = {"u16": 0xFFFF, "s16": 0x8000}


def _points(*rows: tuple[Any, ...]) -> tuple[Point, ...]:
    return tuple(Point(*row) for row in rows)


# What the model definitions make mandatory, in the parts the models share: an inverter's
# total and phase A (and, int models, its scale factors); phases B (102, 112) and C (103, 113);
# a meter's totals and scale factors, plus per model 20x the phases it is wired for.
_INVERTER_MANDATORY: Final = frozenset({"A", "AphA", "PhVphA", "W", "Hz", "WH"})
_INVERTER_SFS: Final = frozenset({"A_SF", "V_SF", "W_SF", "Hz_SF", "WH_SF"})
_SPLIT_PHASE: Final = frozenset({"AphB", "PhVphB"})
_THREE_PHASE: Final = frozenset({"AphB", "AphC", "PhVphB", "PhVphC"})
_METER_MANDATORY: Final = frozenset(
    {"A", "A_SF", "V_SF", "Hz", "W", "W_SF", "TotWhExp", "TotWhImp", "TotWh_SF"}
)
_PHASE_VOLTAGES: Final = frozenset({"PhVphA", "PhVphB", "PhVphC"})
_LINE_VOLTAGES: Final = frozenset({"PhVphAB", "PhVphBC", "PhVphCA"})

INVERTER_INT: Final = Family(
    name="inverter (int + scale factors)",
    ids=frozenset({101, 102, 103}),
    length=50,
    points=_points(
        ("A", 0, "u16", "current", "A_SF", 1.0, "A"),
        ("AphA", 1, "u16", "current_l1", "A_SF", 1.0, "A"),
        ("AphB", 2, "u16", "current_l2", "A_SF", 1.0, "A"),
        ("AphC", 3, "u16", "current_l3", "A_SF", 1.0, "A"),
        ("PPVphAB", 5, "u16", "voltage_l1_l2", "V_SF", 1.0, "V"),
        ("PPVphBC", 6, "u16", "voltage_l2_l3", "V_SF", 1.0, "V"),
        ("PPVphCA", 7, "u16", "voltage_l3_l1", "V_SF", 1.0, "V"),
        ("PhVphA", 8, "u16", "voltage_l1", "V_SF", 1.0, "V"),
        ("PhVphB", 9, "u16", "voltage_l2", "V_SF", 1.0, "V"),
        ("PhVphC", 10, "u16", "voltage_l3", "V_SF", 1.0, "V"),
        ("W", 12, "s16", "power_active", "W_SF", 1.0, "W"),
        ("Hz", 14, "u16", "frequency", "Hz_SF", 1.0, "Hz"),
        ("VA", 16, "s16", "power_apparent", "VA_SF", 1.0, "VA"),
        ("VAr", 18, "s16", "power_reactive", "VAr_SF", 1.0, "var"),
        ("PF", 20, "s16", "power_factor", "PF_SF", 0.01, "%"),
        ("WH", 22, "u32", "energy_active_export", "WH_SF", 1.0, "Wh"),
    ),
    scale_factors={
        "A_SF": 4,
        "V_SF": 11,
        "W_SF": 13,
        "Hz_SF": 15,
        "VA_SF": 17,
        "VAr_SF": 19,
        "PF_SF": 21,
        "WH_SF": 24,
    },
    mandatory={
        101: _INVERTER_MANDATORY | _INVERTER_SFS,
        102: _INVERTER_MANDATORY | _INVERTER_SFS | _SPLIT_PHASE,
        103: _INVERTER_MANDATORY | _INVERTER_SFS | _THREE_PHASE,
    },
)

INVERTER_FLOAT: Final = Family(
    name="inverter (float)",
    ids=frozenset({111, 112, 113}),
    length=60,
    points=_points(
        ("A", 0, "f32", "current", None, 1.0, "A"),
        ("AphA", 2, "f32", "current_l1", None, 1.0, "A"),
        ("AphB", 4, "f32", "current_l2", None, 1.0, "A"),
        ("AphC", 6, "f32", "current_l3", None, 1.0, "A"),
        ("PPVphAB", 8, "f32", "voltage_l1_l2", None, 1.0, "V"),
        ("PPVphBC", 10, "f32", "voltage_l2_l3", None, 1.0, "V"),
        ("PPVphCA", 12, "f32", "voltage_l3_l1", None, 1.0, "V"),
        ("PhVphA", 14, "f32", "voltage_l1", None, 1.0, "V"),
        ("PhVphB", 16, "f32", "voltage_l2", None, 1.0, "V"),
        ("PhVphC", 18, "f32", "voltage_l3", None, 1.0, "V"),
        ("W", 20, "f32", "power_active", None, 1.0, "W"),
        ("Hz", 22, "f32", "frequency", None, 1.0, "Hz"),
        ("VA", 24, "f32", "power_apparent", None, 1.0, "VA"),
        ("VAr", 26, "f32", "power_reactive", None, 1.0, "var"),
        ("PF", 28, "f32", "power_factor", None, 0.01, "%"),
        ("WH", 30, "f32", "energy_active_export", None, 1.0, "Wh"),
    ),
    scale_factors={},
    mandatory={
        111: _INVERTER_MANDATORY,
        112: _INVERTER_MANDATORY | _SPLIT_PHASE,
        113: _INVERTER_MANDATORY | _THREE_PHASE,
    },
)

METER_INT: Final = Family(
    name="meter (int + scale factors)",
    ids=frozenset({201, 202, 203, 204}),
    length=105,
    points=_points(
        ("A", 0, "s16", "current", "A_SF", 1.0, "A"),
        ("AphA", 1, "s16", "current_l1", "A_SF", 1.0, "A"),
        ("AphB", 2, "s16", "current_l2", "A_SF", 1.0, "A"),
        ("AphC", 3, "s16", "current_l3", "A_SF", 1.0, "A"),
        ("PhVphA", 6, "s16", "voltage_l1", "V_SF", 1.0, "V"),
        ("PhVphB", 7, "s16", "voltage_l2", "V_SF", 1.0, "V"),
        ("PhVphC", 8, "s16", "voltage_l3", "V_SF", 1.0, "V"),
        ("PhVphAB", 10, "s16", "voltage_l1_l2", "V_SF", 1.0, "V"),
        ("PhVphBC", 11, "s16", "voltage_l2_l3", "V_SF", 1.0, "V"),
        ("PhVphCA", 12, "s16", "voltage_l3_l1", "V_SF", 1.0, "V"),
        # Hz is mandatory in 20x but Hz_SF is not: a meter without it loses the frequency.
        ("Hz", 14, "s16", "frequency", "Hz_SF", 1.0, "Hz"),
        ("W", 16, "s16", "power_active", "W_SF", 1.0, "W"),
        ("WphA", 17, "s16", "power_active_l1", "W_SF", 1.0, "W"),
        ("WphB", 18, "s16", "power_active_l2", "W_SF", 1.0, "W"),
        ("WphC", 19, "s16", "power_active_l3", "W_SF", 1.0, "W"),
        ("VA", 21, "s16", "power_apparent", "VA_SF", 1.0, "VA"),
        ("VAphA", 22, "s16", "power_apparent_l1", "VA_SF", 1.0, "VA"),
        ("VAphB", 23, "s16", "power_apparent_l2", "VA_SF", 1.0, "VA"),
        ("VAphC", 24, "s16", "power_apparent_l3", "VA_SF", 1.0, "VA"),
        ("VAR", 26, "s16", "power_reactive", "VAR_SF", 1.0, "var"),
        ("VARphA", 27, "s16", "power_reactive_l1", "VAR_SF", 1.0, "var"),
        ("VARphB", 28, "s16", "power_reactive_l2", "VAR_SF", 1.0, "var"),
        ("VARphC", 29, "s16", "power_reactive_l3", "VAR_SF", 1.0, "var"),
        ("PF", 31, "s16", "power_factor", "PF_SF", 0.01, "%"),
        ("PFphA", 32, "s16", "power_factor_l1", "PF_SF", 0.01, "%"),
        ("PFphB", 33, "s16", "power_factor_l2", "PF_SF", 0.01, "%"),
        ("PFphC", 34, "s16", "power_factor_l3", "PF_SF", 0.01, "%"),
        ("TotWhExp", 36, "u32", "energy_active_export", "TotWh_SF", 1.0, "Wh"),
        ("TotWhExpPhA", 38, "u32", "energy_active_export_l1", "TotWh_SF", 1.0, "Wh"),
        ("TotWhExpPhB", 40, "u32", "energy_active_export_l2", "TotWh_SF", 1.0, "Wh"),
        ("TotWhExpPhC", 42, "u32", "energy_active_export_l3", "TotWh_SF", 1.0, "Wh"),
        ("TotWhImp", 44, "u32", "energy_active_import", "TotWh_SF", 1.0, "Wh"),
        ("TotWhImpPhA", 46, "u32", "energy_active_import_l1", "TotWh_SF", 1.0, "Wh"),
        ("TotWhImpPhB", 48, "u32", "energy_active_import_l2", "TotWh_SF", 1.0, "Wh"),
        ("TotWhImpPhC", 50, "u32", "energy_active_import_l3", "TotWh_SF", 1.0, "Wh"),
    ),
    scale_factors={
        "A_SF": 4,
        "V_SF": 13,
        "Hz_SF": 15,
        "W_SF": 20,
        "VA_SF": 25,
        "VAR_SF": 30,
        "PF_SF": 35,
        "TotWh_SF": 52,
    },
    mandatory={
        201: _METER_MANDATORY | {"AphA"},
        202: _METER_MANDATORY | {"AphB", "AphC", "PhVphA", "PhVphB", "PhVphAB"},
        203: _METER_MANDATORY | {"AphA", "AphB", "AphC"} | _PHASE_VOLTAGES | _LINE_VOLTAGES,
        204: _METER_MANDATORY | {"AphA", "AphB", "AphC"} | _LINE_VOLTAGES,
    },
)

FAMILIES: Final = (INVERTER_INT, INVERTER_FLOAT, METER_INT)
#: Model ids a map can be built from.
SUPPORTED_MODELS: Final = frozenset().union(*(family.ids for family in FAMILIES))
#: Offsets (in registers) of the common model's strings: name -> (offset, length); at most
#: COMMON_LENGTH registers of it are read.
COMMON_STRINGS: Final = {
    "manufacturer": (0, 16),
    "model": (16, 16),
    "options": (32, 8),
    "version": (40, 8),
    "serial": (48, 16),
}
COMMON_LENGTH: Final = 66


@dataclass(frozen=True)
class ModelInstance:
    """One model of a device's chain; `address` is that of its ID register."""

    id: int
    address: int
    length: int

    @property
    def data(self) -> int:
        """Address of the model's first data register (after ID and L)."""
        return self.address + 2


@dataclass(frozen=True)
class SunSpecDevice:
    base: int
    models: tuple[ModelInstance, ...]
    identity: dict[str, str]

    def describe(self) -> str:
        ident = " ".join(v for k in ("manufacturer", "model") if (v := self.identity.get(k)))
        serial = self.identity.get("serial")
        chain = ", ".join(f"{m.id}@{m.address}" for m in self.models)
        return f"SunSpec {ident or 'device'}{f' serial {serial}' if serial else ''} [{chain}]"


def family_of(model_id: int) -> Family | None:
    return next((family for family in FAMILIES if model_id in family.ids), None)


async def discover_sunspec(
    read_holding: ReadHolding, *, model_ids: Collection[int] | None = None
) -> RegisterMap:
    """Find the device's models and return the register map of the first one we can read.

    `read_holding(address, count)` reads holding registers of the meter (raising
    MeterReadError). `model_ids` restricts which models may be used (e.g. {203} for the meter
    behind an inverter that exposes both). Raises SunSpecError for a non-SunSpec device.
    """
    device = await scan_sunspec(read_holding)
    return build_register_map(device, model_ids=model_ids)


async def scan_sunspec(read_holding: ReadHolding) -> SunSpecDevice:
    """The marker, the model chain and the common model's identity strings."""
    base = await _find_marker(read_holding)
    models: list[ModelInstance] = []
    address = base + 2
    while True:
        if len(models) >= MAX_MODELS or address + 2 > 0x10000:
            raise SunSpecError(f"SunSpec model chain from {base} does not end (at {address})")
        try:
            model_id, length = await read_holding(address, 2)
        except MeterReadError as exc:
            if exc.kind == "exception" and models:
                break  # no end marker: the chain stops where the device's registers do
            raise
        if model_id == END_OF_CHAIN:
            break
        models.append(ModelInstance(model_id, address, length))
        address += 2 + length
    identity: dict[str, str] = {}
    common = next((m for m in models if m.id == COMMON_MODEL), None)
    if common is not None and common.length > 0:
        words = await read_holding(common.data, min(common.length, COMMON_LENGTH, MAX_REGISTERS))
        identity = _common_strings(words)
    return SunSpecDevice(base, tuple(models), identity)


def build_register_map(
    device: SunSpecDevice, *, model_ids: Collection[int] | None = None
) -> RegisterMap:
    """The map of the first usable model of `device` (see module docstring)."""
    skipped: list[str] = []
    for instance in device.models:
        family = family_of(instance.id)
        if family is None or (model_ids is not None and instance.id not in model_ids):
            continue
        if instance.length < family.length:
            skipped.append(f"{instance.id} (length {instance.length} < {family.length})")
            continue
        return register_map_for(instance, description=device.describe())
    wanted = sorted(model_ids) if model_ids is not None else sorted(SUPPORTED_MODELS)
    found = ", ".join(str(m.id) for m in device.models) or "none"
    why = f"; unusable: {', '.join(skipped)}" if skipped else ""
    raise SunSpecError(f"no SunSpec model we can read (want {wanted}, found {found}){why}")


def register_map_for(instance: ModelInstance, *, description: str = "") -> RegisterMap:
    """The register map of one model placed at `instance.address` (validated like a file)."""
    family = family_of(instance.id)
    if family is None:
        raise ValueError(f"SunSpec model {instance.id} is not supported")
    return RegisterMap.model_validate(
        {
            "model": "sunspec",
            "description": description or f"SunSpec model {instance.id} at {instance.address}",
            "max_registers_per_request": MAX_REGISTERS,
            "max_gap": 10,
            "registers": list(_register_entries(family, instance.id, instance.data)),
        }
    )


def _register_entries(family: Family, model_id: int, data: int) -> Iterable[dict[str, Any]]:
    for point in family.points:
        entry: dict[str, Any] = {
            "channel": point.channel,
            "address": data + point.offset,
            "table": "holding",
            "type": point.type,
            "unit": point.unit,
        }
        if point.scale != 1.0:
            entry["scale"] = point.scale
        if point.sf is not None:
            entry["scale_register"] = {
                "address": data + family.scale_factors[point.sf],
                "table": "holding",
            }
        if point.type in _NOT_IMPLEMENTED:
            entry["unavailable"] = _NOT_IMPLEMENTED[point.type]
        if family.optional(model_id, point):
            entry["optional"] = True
        yield entry


async def _find_marker(read_holding: ReadHolding) -> int:
    tried: list[str] = []
    for base in BASE_ADDRESSES:
        try:
            words = await read_holding(base, 2)
        except MeterReadError as exc:
            if exc.kind != "exception":
                raise
            tried.append(f"{base}: {exc}")
            continue
        if tuple(words) == SUNS_MARKER:
            return base
        tried.append(f"{base}: {' '.join(f'{w:04x}' for w in words)}")
    raise SunSpecError(
        f"no SunS marker at {', '.join(map(str, BASE_ADDRESSES))} ({'; '.join(tried)})"
    )


def _common_strings(words: Sequence[int]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, (offset, length) in COMMON_STRINGS.items():
        text = decode_string(words[offset : offset + length])
        if text:
            found[name] = text
    return found


def decode_string(words: Sequence[int]) -> str:
    """A SunSpec string: two ASCII bytes per register, high byte first, NUL-padded."""
    data = b"".join(word.to_bytes(2, "big") for word in words)
    return data.split(b"\0", 1)[0].decode("ascii", errors="replace").strip()


def encode_string(text: str, length: int) -> list[int]:
    """The registers a device holds for `text` in a `length`-register string point."""
    data = text.encode("ascii")[: 2 * length].ljust(2 * length, b"\0")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def chain_layout(
    models: Sequence[int | tuple[int, int]],
    *,
    base: int = 40000,
    common_length: int = 65,
) -> tuple[ModelInstance, ...]:
    """Where each model sits when a device puts the common model first, then `models` in order
    (what a standard device does). A model is an id (length: its family's) or (id, length).

    The common model is 65 registers long on most devices (66 with the later pad register),
    which puts the first model's ID at 40069 and its data at 40071."""
    chain = [ModelInstance(COMMON_MODEL, base + 2, common_length)]
    for model in models:
        if isinstance(model, tuple):
            model_id, length = model
        else:
            family = family_of(model)
            if family is None:
                raise ValueError(f"SunSpec model {model} is not supported: give its length")
            model_id, length = model, family.length
        last = chain[-1]
        chain.append(ModelInstance(model_id, last.data + last.length, length))
    return tuple(chain)
