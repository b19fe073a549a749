"""Home Assistant MQTT discovery: what the gateway's devices and sensors look like to HA.

Rendering only (pure functions of the inventory); the monitor publishes the messages, retained,
on every connect, and clears the topics of a previous run that are no longer rendered.

Invariants:
- One HA device per meter (via_device: the gateway's device) and one for the gateway. Every
  entity's `unique_id` and discovery topic contain the gateway id, so hundreds of gateways can
  share one broker and one Home Assistant.
- Sensors read the retained JSON state topics the monitor publishes anyway (`value_template`),
  so discovery adds no traffic per sample.
- Energy is offered in kWh (what HA's energy dashboard and tariffs use); the state JSON keeps
  the gateway's canonical Wh. `state_class: total_increasing` lets the energy dashboard take it
  (electricity totals and tariff registers, heat; gas and water volumes in m³).
- A meter's sensors are the main channels it delivers: a Modbus meter's register map says
  which; a serial meter (D0, P1, SML) has none, so its OBIS map and protocol say which it may
  deliver (drivers.serial.channels). Those it is not sure to deliver are discovered disabled
  (`enabled_by_default: false`): listed in HA, enabled by the user, never a dead sensor.
- Every entity is unavailable while the gateway's `status` is `offline`; a meter's measurements
  are also unavailable while that meter is offline (or not read yet), so HA never shows stale
  values as current.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from core.channels import CHANNEL_UNITS, PHASES
from drivers.config import BusConfig, MeterConfig
from gateway.config.schema import HA_MIN_VERSION_DEFAULT, ha_release
from gateway.store.async_store import AsyncStore

log = logging.getLogger(__name__)

ORIGIN_NAME: Final = "meter-gateway"
#: Store state (uplink_state table) where the published discovery topics are remembered.
LEDGER_OWNER: Final = "monitor"
LEDGER_KEY: Final = "discovery_topics"
#: Device keys Home Assistant's MQTT discovery accepts only from a release on; older ones
#: refuse the whole payload ("extra keys not allowed @ data['device']['model_id']").
NEWER_DEVICE_KEYS: Final = {"model_id": (2024, 9)}
#: Payload keys older releases silently drop: `origin` (shown in HA's discovery log lines)
#: came with 2023.9, an MQTT sensor's `options` (an enum's states) with 2024.9 (checked in
#: the released wheels' homeassistant/components/mqtt/). Sent only where they mean something.
NEWER_KEYS: Final = {"origin": (2023, 9), "options": (2024, 9)}


@dataclass(frozen=True, slots=True)
class MeterDescription:
    """What HA is told about one configured meter."""

    id: str
    #: Canonical channels the meter delivers (its register map's); only the main ones become
    #: sensors.
    channels: frozenset[str]
    #: The config's model key, e.g. "sdm630".
    model_id: str | None = None
    #: Human-readable model, e.g. the register map's description.
    model: str | None = None
    manufacturer: str | None = None
    #: Channels the meter may deliver (a serial meter's, before its first telegram): their
    #: sensors are discovered disabled by default.
    maybe_channels: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Inventory:
    """Everything discovery renders: from the config, fixed for the life of the process."""

    gateway_id: str
    meters: tuple[MeterDescription, ...] = ()
    uplinks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Channel:
    name: str
    device_class: str | None
    precision: int
    state_class: str = "measurement"


def _phases(prefix: str, name: str, device_class: str, precision: int) -> dict[str, _Channel]:
    return {
        f"{prefix}_{p}": _Channel(f"{name} {p.upper()}", device_class, precision) for p in PHASES
    }


#: The main channels that become HA sensors, in the order HA lists them.
MAIN_CHANNELS: Final[dict[str, _Channel]] = {
    "power_active": _Channel("Power", "power", 0),
    **_phases("power_active", "Power", "power", 0),
    "power_reactive": _Channel("Reactive power", "reactive_power", 0),
    "power_apparent": _Channel("Apparent power", "apparent_power", 0),
    "power_factor": _Channel("Power factor", "power_factor", 3),
    "frequency": _Channel("Frequency", "frequency", 2),
    **_phases("voltage", "Voltage", "voltage", 1),
    "current": _Channel("Current", "current", 2),
    **_phases("current", "Current", "current", 2),
    "energy_active_import": _Channel("Energy import", "energy", 3, "total_increasing"),
    "energy_active_export": _Channel("Energy export", "energy", 3, "total_increasing"),
    **{
        f"energy_active_{way}_t{tariff}": _Channel(
            f"Energy {way} tariff {tariff}", "energy", 3, "total_increasing"
        )
        for way in ("import", "export")
        for tariff in (1, 2)
    },
    "gas_volume": _Channel("Gas", "gas", 3, "total_increasing"),
    "water_volume": _Channel("Water", "water", 3, "total_increasing"),
    "heat_energy": _Channel("Heat energy", "energy", 3, "total_increasing"),
}

#: Canonical unit -> the unit HA is told; Wh counters are divided by 1000 for kWh.
_HA_UNITS: Final[dict[str, str | None]] = {
    "V": "V",
    "A": "A",
    "W": "W",
    "var": "var",
    "VA": "VA",
    "Hz": "Hz",
    "Wh": "kWh",
    "m3": "m³",  # HA's gas and water device classes want the superscript
    "": None,  # power factor: a ratio, HA wants no unit
}

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def node_id(gateway_id: str) -> str:
    """HA node ids allow only [A-Za-z0-9_-]; gateway ids may also contain '.'."""
    return _UNSAFE.sub("_", f"meter-gateway_{gateway_id}")


def _object_id(*parts: str) -> str:
    return _UNSAFE.sub("_", "_".join(parts))


def _values_template(channel: str) -> str:
    # `value_json['values']`, not `.values`: Jinja would find the dict's values() method first.
    # A channel that is missing or null renders "None", which HA shows as unknown.
    if CHANNEL_UNITS[channel] == "Wh":
        return (
            f"{{% set v = value_json['values'].get('{channel}') %}}"
            "{{ (v / 1000) if v is number else None }}"
        )
    return f"{{{{ value_json['values'].get('{channel}') }}}}"


def _field_template(key: str) -> str:
    return f"{{{{ value_json.get('{key}') }}}}"


class _Renderer:
    def __init__(
        self,
        inventory: Inventory,
        *,
        base_topic: str,
        discovery_prefix: str,
        version: str,
        ha_min_version: str,
    ) -> None:
        self.inventory = inventory
        oldest = ha_release(ha_min_version)
        self.device_keys = {"model", "manufacturer"} | {
            key for key, since in NEWER_DEVICE_KEYS.items() if oldest >= since
        }
        self.payload_keys = {key for key, since in NEWER_KEYS.items() if oldest >= since}
        self.base = base_topic
        self.prefix = discovery_prefix
        self.node = node_id(inventory.gateway_id)
        self.version = version
        self.status_availability = {
            "topic": f"{base_topic}/status",
            "payload_available": "online",
            "payload_not_available": "offline",
        }
        self.gateway_device = {
            "identifiers": [self.node],
            "name": f"meter-gateway {inventory.gateway_id}",
            "manufacturer": "meter-gateway",
            "model": "meter-gateway",
            "sw_version": version,
        }
        self.messages: dict[str, dict[str, Any]] = {}

    def render(self) -> dict[str, dict[str, Any]]:
        for meter in self.inventory.meters:
            self._meter(meter)
        self._gateway()
        for uplink in self.inventory.uplinks:
            self._uplink(uplink)
        return self.messages

    def _add(self, object_id: str, payload: dict[str, Any]) -> None:
        topic = f"{self.prefix}/sensor/{self.node}/{object_id}/config"
        if topic in self.messages:
            log.warning("HA discovery: two entities map to %s; keeping the first", topic)
            return
        payload["unique_id"] = f"{self.node}_{object_id}"
        if "options" not in self.payload_keys:
            payload.pop("options", None)  # an enum without its list still shows its state
        if "origin" in self.payload_keys:
            payload["origin"] = {"name": ORIGIN_NAME, "sw_version": self.version}
        self.messages[topic] = payload

    def _meter(self, meter: MeterDescription) -> None:
        state_topic = f"{self.base}/meters/{meter.id}/state"
        device: dict[str, Any] = {
            "identifiers": [f"{self.node}_{_object_id(meter.id)}"],
            "name": meter.id,
            "via_device": self.node,
        }
        # Without model_id (older HA), a meter without a model name shows its model key.
        model = meter.model or (None if "model_id" in self.device_keys else meter.model_id)
        for key, value in (
            ("model", model),
            ("model_id", meter.model_id),
            ("manufacturer", meter.manufacturer),
        ):
            if value and key in self.device_keys:
                device[key] = value
        measuring = [
            self.status_availability,
            {
                "topic": state_topic,
                "value_template": (
                    "{{ 'online' if value_json.state in ['ok', 'degraded'] else 'offline' }}"
                ),
            },
        ]
        for channel, spec in MAIN_CHANNELS.items():
            if channel not in meter.channels and channel not in meter.maybe_channels:
                continue
            payload: dict[str, Any] = {
                "name": spec.name,
                "state_topic": state_topic,
                "value_template": _values_template(channel),
                "state_class": spec.state_class,
                "suggested_display_precision": spec.precision,
                "availability": measuring,
                "availability_mode": "all",
                "device": device,
            }
            if spec.device_class:
                payload["device_class"] = spec.device_class
            unit = _HA_UNITS[CHANNEL_UNITS[channel]]
            if unit is not None:
                payload["unit_of_measurement"] = unit
            if channel not in meter.channels:
                payload["enabled_by_default"] = False
            self._add(_object_id("meter", meter.id, channel), payload)
        diagnostics: list[tuple[str, dict[str, Any]]] = [
            (
                "state",
                {
                    "name": "State",
                    "device_class": "enum",
                    "options": ["unknown", "ok", "degraded", "offline"],
                    "value_template": "{{ value_json.state }}",
                },
            ),
            (
                "read_errors",
                {
                    "name": "Read errors",
                    "state_class": "total_increasing",
                    "value_template": _field_template("errors_total"),
                },
            ),
            (
                "read_latency",
                {
                    "name": "Read latency",
                    "device_class": "duration",
                    "unit_of_measurement": "s",
                    "state_class": "measurement",
                    "suggested_display_precision": 3,
                    "value_template": _field_template("last_latency_s"),
                },
            ),
        ]
        for key, payload in diagnostics:
            self._diagnostic(_object_id("meter", meter.id, key), state_topic, payload, device)

    def _diagnostic(
        self,
        object_id: str,
        state_topic: str,
        payload: dict[str, Any],
        device: dict[str, Any] | None = None,
    ) -> None:
        """A diagnostic entity, available while the gateway is; of the gateway's own device
        unless `device` (a meter's) is given."""
        payload |= {
            "state_topic": state_topic,
            "entity_category": "diagnostic",
            "availability_topic": self.status_availability["topic"],
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": self.gateway_device if device is None else device,
        }
        self._add(object_id, payload)

    def _gateway(self) -> None:
        state = f"{self.base}/state"
        self._diagnostic(
            "gateway_store_used",
            state,
            {
                "name": "Store used",
                "unit_of_measurement": "%",
                "state_class": "measurement",
                "suggested_display_precision": 1,
                "value_template": _field_template("store_used_pct"),
            },
        )
        self._diagnostic(
            "gateway_store_size",
            state,
            {
                "name": "Store size",
                "device_class": "data_size",
                "unit_of_measurement": "B",
                "state_class": "measurement",
                "value_template": _field_template("store_bytes"),
            },
        )
        self._diagnostic(
            "gateway_sample_rate",
            state,
            {
                "name": "Sample rate",
                "unit_of_measurement": "samples/min",
                "state_class": "measurement",
                "suggested_display_precision": 1,
                "value_template": _field_template("samples_per_min"),
            },
        )
        self._diagnostic(
            "gateway_alerts",
            state,
            {
                "name": "Alerts",
                "state_class": "measurement",
                "value_template": _field_template("alerts"),
            },
        )
        self._diagnostic(
            "gateway_started",
            state,
            {
                "name": "Started",
                "device_class": "timestamp",
                "value_template": _field_template("started"),
            },
        )

    def _uplink(self, uplink: str) -> None:
        state = f"{self.base}/uplinks/{uplink}/state"
        label = uplink.capitalize() if uplink.islower() else uplink
        self._diagnostic(
            _object_id("uplink", uplink, "backlog"),
            state,
            {
                "name": f"{label} backlog",
                "unit_of_measurement": "samples",
                "state_class": "measurement",
                "value_template": _field_template("backlog_rows"),
            },
        )
        self._diagnostic(
            _object_id("uplink", uplink, "oldest_undelivered_age"),
            state,
            {
                "name": f"{label} oldest undelivered age",
                "device_class": "duration",
                "unit_of_measurement": "s",
                "state_class": "measurement",
                "value_template": _field_template("oldest_undelivered_age_s"),
            },
        )
        self._diagnostic(
            _object_id("uplink", uplink, "dead_letters"),
            state,
            {
                "name": f"{label} dead letters",
                "state_class": "measurement",
                "value_template": _field_template("dead_letters"),
            },
        )
        self._diagnostic(
            _object_id("uplink", uplink, "last_success"),
            state,
            {
                "name": f"{label} last success",
                "device_class": "timestamp",
                "value_template": _field_template("last_success"),
            },
        )


def discovery_messages(
    inventory: Inventory,
    *,
    base_topic: str,
    discovery_prefix: str,
    version: str,
    ha_min_version: str = HA_MIN_VERSION_DEFAULT,
) -> dict[str, dict[str, Any]]:
    """Discovery topic -> config payload for every entity of this gateway, with only keys
    every Home Assistant release from `ha_min_version` on accepts."""
    renderer = _Renderer(
        inventory,
        base_topic=base_topic,
        discovery_prefix=discovery_prefix,
        version=version,
        ha_min_version=ha_min_version,
    )
    return renderer.render()


def describe_meters(
    meters: Iterable[MeterConfig], buses: Mapping[str, BusConfig] | None = None
) -> tuple[MeterDescription, ...]:
    """Meter descriptions from their register maps (built in or user maps), or for serial
    meters (D0, P1, SML: known from `buses`) from their OBIS map and M-Bus medium.

    A meter whose map cannot be known in advance (`model: sunspec`, discovered at the first
    read) gets its diagnostic sensors only, and a log line: better no sensor than one that
    never has a value.
    """
    from drivers.modbus.maps import meter_register_map
    from drivers.serial.channels import serial_meter_channels
    from drivers.serial.config import DsmrP1BusConfig, Iec62056BusConfig, SmlBusConfig

    described: list[MeterDescription] = []
    for meter in meters:
        bus = (buses or {}).get(meter.bus)
        if isinstance(bus, Iec62056BusConfig | DsmrP1BusConfig | SmlBusConfig):
            serial = serial_meter_channels(meter, bus)
            described.append(
                MeterDescription(
                    meter.id,
                    serial.expected,
                    model_id=bus.type,
                    model=serial.model,
                    maybe_channels=serial.possible - serial.expected,
                )
            )
            continue
        try:
            register_map = meter_register_map(meter)
        except (KeyError, ValueError) as exc:  # a map the loader would have refused
            log.warning("HA discovery: no register map for %s: %s", meter.id, exc)
            register_map = None
        model_id = meter.model or (register_map.model if register_map is not None else None)
        if register_map is None:
            log.info("HA discovery: no channel list for model %r of %s", meter.model, meter.id)
            described.append(MeterDescription(meter.id, frozenset(), model_id=model_id))
            continue
        described.append(
            MeterDescription(
                meter.id,
                frozenset(register_map.channels()),
                model_id=model_id,
                model=register_map.description or model_id,
                manufacturer=getattr(register_map, "manufacturer", None),
            )
        )
    return tuple(described)


class DiscoveryLedger(Protocol):
    """Where the monitor remembers the discovery topics it published (across restarts)."""

    async def load(self) -> list[str]: ...

    async def save(self, topics: Sequence[str]) -> None: ...


class StoreLedger:
    """Remembers, in the store, which discovery topics this gateway has published.

    So a meter removed from the config has its retained discovery configs cleared at the next
    start, even though the configs themselves only live on the broker.
    """

    def __init__(self, astore: AsyncStore) -> None:
        self._astore = astore

    async def load(self) -> list[str]:
        try:
            raw = await self._astore.state(LEDGER_OWNER, LEDGER_KEY)
            topics = json.loads(raw) if raw else []
        except (sqlite3.Error, ValueError) as exc:
            log.warning("HA discovery: cannot read the published-topics list: %s", exc)
            return []
        return [t for t in topics if isinstance(t, str)] if isinstance(topics, list) else []

    async def save(self, topics: Sequence[str]) -> None:
        value = json.dumps(sorted(topics), separators=(",", ":"))
        try:
            await self._astore.put_state(LEDGER_OWNER, {LEDGER_KEY: value})
        except sqlite3.Error as exc:
            log.warning("HA discovery: cannot save the published-topics list: %s", exc)
