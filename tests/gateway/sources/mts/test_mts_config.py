"""The `sources: mts:` section: defaults, secrets, and errors that name file, line and key."""

from __future__ import annotations

from datetime import time

import pytest

from core.config_errors import ConfigError
from gateway.config.loader import parse_config

BASE = """\
gateway: {id: site-42, timezone: Europe/London}
sources:
  mts:
    token: ${MTS_TOKEN}
    meters:
      hh1:
        meter_type: ELSTERA1700
        remote_address: "07777000000"
        password: ${METER_PW}
"""
SECRETS = {"MTS_TOKEN": "tok-123", "METER_PW": "AAAA0000"}


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "site.yaml", SECRETS if environ is None else environ)
    return [str(p) for p in info.value.problems]


def test_defaults_secrets_and_meter_ids_uplinks_may_use() -> None:
    text = BASE + (
        "uplinks:\n  wattics:\n    username: u\n    password: p\n"
        "    meters: {hh1: {id: a}, hh1-registers: {id: b}}\n"
    )
    config = parse_config(text, "site.yaml", SECRETS)
    mts = config.sources.mts
    assert mts is not None
    assert mts.base_url == "https://www.coherent-research.co.uk/MTS"
    assert mts.token.get_secret_value() == "tok-123"
    meter = mts.meters["hh1"]
    assert meter.schedule.daily_at == time(2, 0)
    assert meter.immediate is False
    assert meter.survey_days == 1
    assert meter.password is not None and meter.password.get_secret_value() == "AAAA0000"
    assert "tok-123" not in repr(config) and "AAAA0000" not in repr(config)
    assert meter.register_map()["active energy import"].channel == "energy_active_import"
    assert meter.survey_map()["kwh import"].channel == "energy_active_import"
    assert [meter_id for _, meter_id in mts.meter_ids()] == ["hh1", "hh1-registers"]


def test_channel_overrides_merge_over_defaults_and_null_removes_one() -> None:
    text = BASE + (
        "        registers: {Active Energy Import: null, Import kWh: energy_active_import}\n"
        "        survey:\n"
        "          kWh Import: {channel: power_active, kind: interval}\n"
    )
    meter = parse_config(text, "site.yaml", SECRETS).sources.mts.meters["hh1"]  # type: ignore[union-attr]
    registers = meter.register_map()
    assert "active energy import" not in registers
    assert registers["import kwh"].channel == "energy_active_import"
    assert meter.survey_map()["kwh import"].kind == "interval"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "        schedule: {daily_at: 2:00}\n",
            "site.yaml:10: sources.mts.meters.hh1.schedule.daily_at: write the time in quotes",
        ),
        (
            "        schedule: {daily_at: '02:00', every_secs: 1h}\n",
            "site.yaml:10: sources.mts.meters.hh1.schedule: give exactly one of daily_at",
        ),
        (
            "        survey_day: 2\n",
            "site.yaml:10: sources.mts.meters.hh1.survey_day: unknown key",
        ),
        (
            "        registers: {Active Energy Import: energy_imported}\n",
            "site.yaml:10: sources.mts.meters.hh1.registers.Active Energy Import: "
            "unknown channel 'energy_imported'",
        ),
        (
            "        survey: {kWh Import: {channel: energy_active_import, kind: interval}}\n",
            "site.yaml:10: sources.mts.meters.hh1.survey.kWh Import: an interval value becomes",
        ),
        (
            "        registers_meter: hh1\n",
            "sources.mts: meters.hh1.registers_meter: the meter's own id only with survey_days: 0",
        ),
        (
            "        coms_settings: 9X1\n",
            "site.yaml:10: sources.mts.meters.hh1.coms_settings:",
        ),
    ],
)
def test_a_bad_meter_is_reported_with_file_line_and_key(extra: str, expected: str) -> None:
    found = problems(BASE + extra)
    assert len(found) == 1, found
    assert expected in found[0]


def test_a_missing_token_is_named() -> None:
    found = problems(BASE, {"METER_PW": "x"})
    assert found[0].startswith("site.yaml:4: sources.mts.token: secret ${MTS_TOKEN} is not set")


def test_a_meter_id_used_by_a_polled_meter_and_an_mts_snapshot_is_reported() -> None:
    text = (
        BASE
        + "buses:\n  plant: {type: modbus-tcp, host: 127.0.0.1}\n"
        + "meters:\n  - {id: hh1-registers, bus: plant, model: sdm630}\n"
    )
    assert problems(text) == [
        "site.yaml:6: sources.mts.meters.hh1: meter id 'hh1-registers' is used twice"
    ]


def test_an_uplink_naming_an_unknown_mts_meter_is_an_error() -> None:
    text = BASE + (
        "uplinks:\n  wattics:\n    username: u\n    password: p\n    meters: {hh2: {id: a}}\n"
    )
    assert problems(text) == ["site.yaml:14: uplinks.wattics.meters.hh2: no meter with id 'hh2'"]
