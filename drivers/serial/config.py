"""Config of serial utility meters: D0 (IEC 62056-21), DSMR P1 and SML buses, and the meter
keys only they use. drivers.config puts these buses in its `BusConfig` union and mixes
`SerialMeterFields` into `MeterConfig`; drivers.checks checks the keys only some buses take.
Each bus type registers its line builder in drivers.registry.BUSES.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeGuard

from pydantic import Field, SecretStr, field_validator, model_validator

from core.channels import CHANNEL_UNITS
from core.config_base import Strict, obsolete_key
from core.durations import Seconds
from drivers.registry import BUSES
from drivers.serial.obis_map import UNITS, ObisMapError, Override, config_code

#: The DSMR flavours the P1 driver knows (dsmr-parser's telegram specifications, named as
#: dsmr-parser names them): Dutch 2.2-5, Belgian e-MUCS, Luxembourg Smarty, Sweden, E.ON
#: Hungary, Irish Iskra, EasyMeter Q3D, Austrian Sagemcom T210-D (always encrypted).
DsmrVersion = Literal[
    "2.2", "3", "4", "5", "5B", "5L", "5S", "5EONHU", "ISKRA_IE", "Q3D", "SAGEMCOM_T210_D_R"
]
#: Flavours that send DLMS/GCM-encrypted telegrams (5L only when a key is configured).
ENCRYPTED_VERSIONS: frozenset[str] = frozenset({"5L", "SAGEMCOM_T210_D_R"})
#: An AES-128 key as the grid operator hands it out: 32 hex digits.
_KEY = re.compile(r"^[0-9A-Fa-f]{32}$")

#: EN 13757-3 M-Bus device types a medium may have (what 0-n:24.1.0 says).
MEDIUM_DEVICE_TYPES: Mapping[str, frozenset[int]] = {
    "gas": frozenset({0x03}),
    "water": frozenset({0x06, 0x07, 0x15, 0x16}),
    "heat": frozenset({0x04, 0x0C, 0x0D}),
}
#: The channel an M-Bus medium's reading feeds.
MEDIUM_CHANNELS: Mapping[str, str] = {
    "gas": "gas_volume",
    "water": "water_volume",
    "heat": "heat_energy",
}


class _SerialLine(Strict):
    #: A device path; prefer the stable /dev/serial/by-id/... link of a USB adapter.
    port: str = Field(min_length=1)
    #: Re-opening a lost port (adapter unplugged, USB re-enumerated) backs off up to this.
    reconnect_max_secs: Seconds = 30.0


class Iec62056BusConfig(_SerialLine):
    """IEC 62056-21 (D0) readout over an optical head or RS-485: the gateway asks, the meter
    answers. Mode C (baud-rate switch with acknowledgement) by default; the meter's
    identification decides, so mode A and B meters are read too. `mode: push` is for meters
    that send their data block on their own (EasyMeter Q3D, Hager eHZ): listen, never ask."""

    type: Literal["iec62056-21"]
    #: readout: sign on and ask (the standard's mode A-C); push: the meter sends unasked,
    #: every second or so, at `baudrate` (set it: push meters send at 9600 or faster).
    mode: Literal["readout", "push"] = "readout"
    #: push: a read fails ("stale") when the newest complete data block is older than this.
    max_telegram_age_secs: Seconds = 30.0
    #: Sign-on rate (the standard's 300 baud); the readout runs at up to `max_baudrate`.
    baudrate: int = Field(default=300, ge=300, le=19200)
    max_baudrate: int = Field(default=9600, ge=300, le=19200)
    bytesize: Literal[7, 8] = 7
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    #: Longest silence within an exchange (the standard allows 1.5 s between characters).
    timeout_secs: Seconds = 2.0
    #: Longest whole readout; a long readout at 300 baud (mode A) takes tens of seconds.
    readout_timeout_secs: Seconds = 60.0
    #: After a readout that failed once switched to the faster rate, a meter is read this many
    #: times at the sign-on rate before the faster rate is tried again (0: never fall back).
    fast_retry_after: int = Field(default=10, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _no_switch_delay(cls, data: Any) -> Any:
        why = "the baud rate switches as soon as the acknowledgement has left the port"
        return obsolete_key(data, "switch_delay_ms", why)

    def line_settings(self) -> tuple[int, int, str, int]:
        """(baudrate, bytesize, parity, stopbits) the port is opened with (the sign-on rate)."""
        return self.baudrate, self.bytesize, self.parity, self.stopbits

    @model_validator(mode="after")
    def _rates(self) -> Iec62056BusConfig:
        if self.mode == "readout" and self.max_baudrate < self.baudrate:
            raise ValueError("max_baudrate must not be below baudrate (the sign-on rate)")
        return self


class DsmrP1BusConfig(_SerialLine):
    """A DSMR P1 port (NL, BE e-MUCS, LU, SE, HU, IE, AT): the meter pushes a telegram every
    1 or 10 s. One port serves one meter, so its keys sit here with its version."""

    type: Literal["dsmr-p1"]
    #: 2.2 | 3 | 4 | 5 | 5B (Belgian e-MUCS) | 5L (Luxembourg Smarty) | 5S (Sweden) |
    #: 5EONHU (E.ON Hungary) | ISKRA_IE (Ireland) | Q3D (EasyMeter) | SAGEMCOM_T210_D_R (Austria).
    dsmr_version: DsmrVersion = "5"
    #: The meter's own AES-128 key (32 hex digits, from the grid operator): a secret, write
    #: `${NAME}` or `${file:...}`. Required for SAGEMCOM_T210_D_R; on 5L it means the meter
    #: sends encrypted telegrams.
    encryption_key: SecretStr | None = None
    #: The GCM authentication key, where the meter has its own (Sagemcom); none: the Smarty's
    #: fixed public key, or (Sagemcom) no tag check, the telegram's CRC still guards it.
    authentication_key: SecretStr | None = None
    #: Default 115200 baud, 9600 for 2.2, 3 and Q3D.
    baudrate: int | None = Field(default=None, ge=300, le=921600)
    #: Default 8N1, 7E1 for 2.2, 3 and Q3D.
    bytesize: Literal[7, 8] | None = None
    parity: Literal["N", "E", "O"] | None = None
    stopbits: Literal[1, 2] = 1
    #: A read fails ("stale") when the newest complete telegram is older than this; the port
    #: is also re-opened after this long without a byte.
    max_telegram_age_secs: Seconds = 30.0
    #: Bounds each wait for bytes (the poller's guard uses it too).
    timeout_secs: Seconds = 5.0

    @field_validator("dsmr_version", mode="before")
    @classmethod
    def _version_text(cls, value: object) -> object:
        # YAML reads `dsmr_version: 5` as an int and `2.2` as a float.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("encryption_key", "authentication_key")
    @classmethod
    def _hex_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _KEY.match(value.get_secret_value()):
            raise ValueError(
                "must be 32 hex digits (the AES-128 key as the grid operator gives it)"
            )
        return value

    @model_validator(mode="after")
    def _keys_fit_the_version(self) -> DsmrP1BusConfig:
        if self.dsmr_version == "SAGEMCOM_T210_D_R" and self.encryption_key is None:
            raise ValueError("dsmr_version SAGEMCOM_T210_D_R needs encryption_key (the meter's)")
        if self.dsmr_version not in ENCRYPTED_VERSIONS:
            for key in ("encryption_key", "authentication_key"):
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"{key} applies to encrypted meters only (dsmr_version 5L or "
                        "SAGEMCOM_T210_D_R)"
                    )
        if self.authentication_key is not None and self.encryption_key is None:
            raise ValueError("authentication_key needs encryption_key")
        return self

    def line_settings(self) -> tuple[int, int, str, int]:
        """(baudrate, bytesize, parity, stopbits) with the version's defaults filled in."""
        # EasyMeter Q3D: its optical interface sends 9600 7E1 (the meter's manual)
        old = self.dsmr_version in ("2.2", "3", "Q3D")
        return (
            self.baudrate or (9600 if old else 115200),
            self.bytesize or (7 if old else 8),
            self.parity or ("E" if old else "N"),
            self.stopbits,
        )


class SmlBusConfig(_SerialLine):
    """An SML IR head (German eHZ/EDL meters): the meter pushes a binary telegram every 1-4 s."""

    type: Literal["sml"]
    baudrate: int = Field(default=9600, ge=300, le=921600)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    #: The telegram checksum: x25 (the SML standard); a few meters use kermit.
    crc: Literal["x25", "kermit"] = "x25"
    max_telegram_age_secs: Seconds = 30.0
    timeout_secs: Seconds = 5.0

    def line_settings(self) -> tuple[int, int, str, int]:
        """(baudrate, bytesize, parity, stopbits) the port is opened with."""
        return self.baudrate, self.bytesize, self.parity, self.stopbits


SerialBusConfig = Iec62056BusConfig | DsmrP1BusConfig | SmlBusConfig
SERIAL_BUS_TYPES: tuple[type[Strict], ...] = (Iec62056BusConfig, DsmrP1BusConfig, SmlBusConfig)

BUSES.register("iec62056-21", "drivers.serial.d0_push:build_line")
BUSES.register("dsmr-p1", "drivers.serial.dsmr_p1:P1Line.from_config")
BUSES.register("sml", "drivers.serial.sml:SmlLine.from_config")


class ObisTargetConfig(Strict):
    """`obis: {"1.8.0": {channel: energy_active_import, unit: kWh}}`: a channel, and the unit
    to assume when the meter prints none."""

    channel: str
    unit: str | None = None

    @field_validator("channel")
    @classmethod
    def _known_channel(cls, value: str) -> str:
        return _channel(value)

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, value: str | None) -> str | None:
        if value is not None and value not in UNITS:
            raise ValueError(f"unknown unit {value!r} (known: {', '.join(UNITS)})")
        return value


def _channel(value: str) -> str:
    if value not in CHANNEL_UNITS:
        raise ValueError(f"unknown channel {value!r} (see docs/channels.md)")
    return value


ObisOverrideValue = Annotated[str, Field(min_length=1)] | ObisTargetConfig | None


class SerialMeterFields(Strict):
    """Meter keys for D0, P1 and SML meters (mixed into gateway.config.schema.Meter)."""

    #: D0 on a shared RS-485 line: the device address sent in the sign-on (`/?ADDRESS!`).
    address: str | None = Field(default=None, pattern=r"^[0-9A-Za-z ]{1,32}$")
    #: D0: what a readout whose BCC does not match is worth. strict (default): nothing, the
    #: readout is refused; warn: its values are taken, the mismatch counted (`bcc_ignored`)
    #: and logged once; off: the BCC is not checked (for meters that compute it wrongly).
    bcc: Literal["strict", "warn", "off"] | None = None
    #: DSMR P1: the M-Bus channel (1-4) of a gas, water or heat meter behind the electricity
    #: meter. Such a meter's samples carry the time the telegram gives its reading.
    mbus_channel: int | None = Field(default=None, ge=1, le=4)
    #: What that M-Bus device measures (default gas); checked against the device type the
    #: telegram reports, so a water meter is never stored as gas.
    medium: Literal["gas", "water", "heat"] | None = None
    #: OBIS code -> channel (or null to ignore the code), overriding drivers/obis/default.yaml.
    obis: dict[str, ObisOverrideValue] | None = None

    @field_validator("obis")
    @classmethod
    def _valid_overrides(
        cls, value: dict[str, ObisOverrideValue] | None
    ) -> dict[str, ObisOverrideValue] | None:
        if value is None:
            return None
        for code, target in value.items():
            try:
                config_code(code)
            except ObisMapError as exc:
                raise ValueError(str(exc)) from None
            if isinstance(target, str):
                _channel(target)
        return value

    def obis_overrides(self) -> dict[str, Override]:
        """The `obis:` overrides in the OBIS map's normal form."""
        overrides: dict[str, Override] = {}
        for code, target in (self.obis or {}).items():
            if isinstance(target, ObisTargetConfig):
                overrides[config_code(code)] = Override(target.channel, target.unit)
            else:
                overrides[config_code(code)] = Override(target)
        return overrides


def is_serial_bus(bus: object) -> TypeGuard[SerialBusConfig]:
    return isinstance(bus, SERIAL_BUS_TYPES)
