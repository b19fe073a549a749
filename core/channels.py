"""The one channel vocabulary every driver writes and every uplink reads.

Units are normalised at the driver boundary so that no uplink ever converts twice:
V, A, W, var, VA, Hz, Wh, varh, dimensionless power factor; m3 for gas and water volumes. A
meter register in kWh is multiplied by 1000 by its register map's scale; an uplink that wants
kWh divides.
"""

from __future__ import annotations

from typing import Final

PHASES: Final = ("l1", "l2", "l3")

#: channel name -> unit. Per-phase names end in _l1/_l2/_l3; totals have no suffix.
CHANNEL_UNITS: Final[dict[str, str]] = {
    **{f"voltage_{p}": "V" for p in PHASES},
    "voltage_l1_l2": "V",
    "voltage_l2_l3": "V",
    "voltage_l3_l1": "V",
    **{f"current_{p}": "A" for p in PHASES},
    "current_n": "A",
    "current": "A",
    **{f"power_active_{p}": "W" for p in PHASES},
    "power_active": "W",
    **{f"power_reactive_{p}": "var" for p in PHASES},
    "power_reactive": "var",
    **{f"power_apparent_{p}": "VA" for p in PHASES},
    "power_apparent": "VA",
    **{f"power_factor_{p}": "" for p in PHASES},
    "power_factor": "",
    "frequency": "Hz",
    "energy_active_import": "Wh",
    "energy_active_export": "Wh",
    "energy_active_total": "Wh",
    **{f"energy_active_import_{p}": "Wh" for p in PHASES},
    **{f"energy_active_export_{p}": "Wh" for p in PHASES},
    "energy_reactive_import": "varh",
    "energy_reactive_export": "varh",
    "energy_reactive_total": "varh",
    # Tariff registers of utility meters (D0, DSMR P1, SML: OBIS 1.8.1/1.8.2, 2.8.1/2.8.2).
    "energy_active_import_t1": "Wh",
    "energy_active_import_t2": "Wh",
    "energy_active_export_t1": "Wh",
    "energy_active_export_t2": "Wh",
    # Other media, read through a utility meter (DSMR M-Bus channels) or on their own.
    "gas_volume": "m3",
    "water_volume": "m3",
    "heat_energy": "Wh",
}

#: Cumulative counters: they must never decrease and uplinks may derive consumption from them.
ENERGY_CHANNELS: Final = frozenset(name for name in CHANNEL_UNITS if name.startswith("energy_"))

#: Every cumulative register, electricity or another medium (gas and water in m3, heat in Wh).
COUNTER_CHANNELS: Final = ENERGY_CHANNELS | {"gas_volume", "water_volume", "heat_energy"}


def is_known_channel(name: str) -> bool:
    return name in CHANNEL_UNITS


def unit_of(name: str) -> str:
    return CHANNEL_UNITS[name]


#: Suffixes a channel name adds to its type: phases and lines, then direction and tariff.
_TYPE_SUFFIXES: Final = (
    "_l1_l2",
    "_l2_l3",
    "_l3_l1",
    "_l1",
    "_l2",
    "_l3",
    "_n",
    "_t1",
    "_t2",
    "_import",
    "_export",
    "_total",
)


def channel_type(name: str) -> str:
    """The physical quantity a channel measures: `voltage_l1_l2` -> `voltage`,
    `energy_active_import_t1` -> `energy_active`, `current_n` -> `current`."""
    stripped = True
    while stripped:
        stripped = False
        for suffix in _TYPE_SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                name, stripped = name[: -len(suffix)], True
                break
    return name


#: Per channel type, the values a real meter can report (canonical units); outside them a
#: reading is implausible (gateway.plausibility). Wide on purpose: medium-voltage metering,
#: signed currents and powers, net counters that go negative, a plant's lifetime energy; a
#: site narrows them with `gateway.plausible_ranges`.
PLAUSIBLE_RANGES: Final[dict[str, tuple[float, float]]] = {
    "voltage": (0.0, 1e6),
    "current": (-1e6, 1e6),
    "power_active": (-1e10, 1e10),
    "power_reactive": (-1e10, 1e10),
    "power_apparent": (-1e10, 1e10),
    "power_factor": (-1.001, 1.001),
    "frequency": (0.0, 1000.0),
    "energy_active": (-1e15, 1e15),
    "energy_reactive": (-1e15, 1e15),
    "gas_volume": (-1e12, 1e12),
    "water_volume": (-1e12, 1e12),
    "heat_energy": (-1e15, 1e15),
}
