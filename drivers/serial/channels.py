"""What a serial utility meter (D0, DSMR P1, SML) can deliver, known before its first reading.

A Modbus meter's channels are its register map's. A serial meter has no register map: it sends
whatever OBIS codes its make prints, and the OBIS map (drivers/obis/default.yaml plus the meter's
`obis:` overrides) turns them into channels. So before the first telegram only two things are
known: which channels the OBIS map *can* fill from what the protocol carries, and which of them
every meter of that kind sends. HA discovery (gateway.ops.discovery) offers the first set and
enables the second by default.

Choices (the issues do not say):
- DSMR P1: the channels the version's telegram specification can carry (dsmr-parser's), after
  overrides. Every DSMR version makes tariff registers 1.8.1/1.8.2/2.8.1/2.8.2 and power
  1.7.0/2.7.0 mandatory, so those and the totals summed from them are expected; per-phase
  values depend on the meter (single- or three-phase, DSMR 4.0 or later) and are offered only.
- D0 and SML: any code may appear, so every channel of the OBIS map is possible; expected are
  energy import/export and total power, what an energy dashboard needs and nearly every such
  meter prints (1.8.0/2.8.0 or tariffs, 16.7.0).
- An M-Bus device behind a P1 meter (`mbus_channel`): exactly its medium's channel.
- A channel the meter's `obis:` override maps a code to is expected: the installer said so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from drivers.config import MeterConfig
from drivers.serial.config import MEDIUM_CHANNELS, DsmrP1BusConfig, SerialBusConfig
from drivers.serial.lines import obis_map_for
from drivers.serial.obis_map import ObisMap

#: Channels every DSMR telegram carries (directly or as a sum of mandatory tariff registers).
DSMR_EXPECTED: Final = frozenset(
    {
        "energy_active_import",
        "energy_active_export",
        "energy_active_import_t1",
        "energy_active_import_t2",
        "energy_active_export_t1",
        "energy_active_export_t2",
        "power_active",
    }
)
#: Channels nearly every D0 or SML electricity meter prints.
OBIS_EXPECTED: Final = frozenset({"energy_active_import", "energy_active_export", "power_active"})

_PROTOCOL_NAMES: Final = {"iec62056-21": "IEC 62056-21 (D0)", "sml": "SML"}


@dataclass(frozen=True, slots=True)
class SerialChannels:
    """The channels a serial meter may deliver, and those it is expected to."""

    possible: frozenset[str]
    expected: frozenset[str]
    #: What the meter is, for humans ("DSMR 5 P1 meter", "gas meter on M-Bus channel 1").
    model: str


def serial_meter_channels(meter: MeterConfig, bus: SerialBusConfig) -> SerialChannels:
    if isinstance(bus, DsmrP1BusConfig) and meter.mbus_channel is not None:
        medium = meter.medium or "gas"
        only = frozenset({MEDIUM_CHANNELS[medium]})
        return SerialChannels(only, only, f"{medium} meter on M-Bus channel {meter.mbus_channel}")
    obis = obis_map_for(meter)
    overridden = {o.channel for o in meter.obis_overrides().values() if o.channel is not None}
    if isinstance(bus, DsmrP1BusConfig):
        from drivers.serial.dsmr_p1 import telegram_codes

        codes = telegram_codes(bus.dsmr_version) | set(meter.obis_overrides())
        possible = fillable(obis, codes)
        expected = DSMR_EXPECTED | overridden
        model = f"DSMR {bus.dsmr_version} P1 meter"
    else:
        possible = frozenset(obis.rules)
        expected = OBIS_EXPECTED | overridden
        model = f"{_PROTOCOL_NAMES.get(bus.type, bus.type)} meter"
    return SerialChannels(possible, possible & expected, model)


def fillable(obis: ObisMap, codes: set[str] | frozenset[str]) -> frozenset[str]:
    """Channels with at least one alternative whose codes are all among `codes`."""
    return frozenset(
        channel
        for channel, alternatives in obis.rules.items()
        if any(all(term.code in codes for term in alternative) for alternative in alternatives)
    )
