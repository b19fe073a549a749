"""The `uplinks: enerkey:` section: defaults, key forms, checks, and what it builds."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from core.config_errors import ConfigError
from core.health import Health
from gateway.config.loader import load_config
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from gateway.uplinks.enerkey.messages import build_body, push_url
from gateway.uplinks.enerkey.uplink import EnerKeyUplink
from gateway.uplinks.registry import UplinkContext, build_uplinks
from tests.paths import REPO

BASE = """\
gateway: {id: site-42, timezone: Europe/Helsinki, data_dir: /tmp/mg}
buses:
  plant: {type: modbus-tcp, host: 127.0.0.1, port: 5020}
meters:
  - {id: incomer, bus: plant, unit: 1, model: sdm630}
  - {id: pv, bus: plant, unit: 3, model: sdm630}
uplinks:
  enerkey:
"""

ONE_METER = "    meters: {incomer: {meter_id: 1, unit: kWh}}\n"
SECRETS = {"ENERKEY_KEY_A": "key-a-Secret-111", "ENERKEY_KEY_B": "key-b-Secret-222"}


def load(tmp_path: Path, section: str) -> object:
    path = tmp_path / "site.yaml"
    path.write_text(BASE + section)
    return load_config(path, SECRETS)


def problems(tmp_path: Path, section: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, section)
    return [str(p) for p in info.value.problems]


def test_defaults_and_both_key_forms(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
    api_keys:
      - ${ENERKEY_KEY_A}
      - {key: "${ENERKEY_KEY_B}", valid_from: 2025-01-01, valid_until: 2026-12-31}
    meters:
      incomer: {meter_id: 4711, unit: kWh}
      pv: {meter_id: "PV-1", mode: consumption, unit: MWh, decimals: 9}
""",
    )
    section = config.uplinks.enerkey  # type: ignore[attr-defined]
    assert section.base_url == "https://api.enerkey.com"
    assert section.max_interpolation_gap_secs == 900.0
    assert section.rate_limit_per_day == 40_000
    assert section.max_days_per_message == 365
    assert section.api_keys[0].key.get_secret_value() == "key-a-Secret-111"
    assert section.api_keys[1].valid_until == date(2026, 12, 31)
    assert section.meters["incomer"].mode == "cumulative"
    assert section.meters["incomer"].unit == "kWh"
    assert "key-a-Secret" not in repr(section) and "key-b-Secret" not in repr(section)
    incomer, pv = section.meters["incomer"], section.meters["pv"]
    assert str(push_url(section, incomer)) == (
        "https://api.enerkey.com/api/v2/Values/PushCumulativeReadingsForMeter"
    )
    assert str(push_url(section, pv)).endswith("/api/v2/Values/PushConsumptionsForMeter")


def test_paths_and_field_names_can_be_overridden(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
    api_keys: [k1]
    base_url: https://test.example.com/
    cumulative_path: /v1/meters/{meter_id}/cumulative
    fields: {meter_id: id, values: readings, timestamp: ts, value: v}
    meters: {incomer: {meter_id: "A/7 x", unit: kWh}}
""",
    )
    section = config.uplinks.enerkey  # type: ignore[attr-defined]
    meter = section.meters["incomer"]
    assert (
        str(push_url(section, meter)) == "https://test.example.com/v1/meters/A%2F7%20x/cumulative"
    )
    body = build_body(section, meter.meter_id, [(1_711_846_800_000, 1.5)], tz=None)  # type: ignore[arg-type]
    assert body == b'{"id":"A/7 x","readings":[{"ts":"2024-03-31T01:00:00Z","v":1.5}]}'


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("    api_keys: []\n    meters: {incomer: {meter_id: 1, unit: kWh}}\n", "at least 1 item"),
        (
            "    api_keys: [a, b, c]\n    meters: {incomer: {meter_id: 1, unit: kWh}}\n",
            "at most 2 items",
        ),
        (
            "    api_keys: [same, same]\n    meters: {incomer: {meter_id: 1, unit: kWh}}\n",
            "the same",
        ),
        ("    api_keys: [a]\n    meters: {nowhere: {meter_id: 1, unit: kWh}}\n", "nowhere"),
        (
            "    api_keys: [a]\n    meters: {incomer: {meter_id: 1, unit: kWh},\n"
            "             pv: {meter_id: 1, unit: kWh}}\n",
            "configured for two meters",
        ),
        ("    api_keys: [a]\n    meters: {incomer: {meter_id: 1, unit: kvarh}}\n", "does not fit"),
        (
            "    api_keys: [a]\n"
            "    meters: {incomer: {meter_id: 1, unit: kWh, channel: power_active}}\n",
            "not an energy counter",
        ),
        (
            "    api_keys: [a]\n    cumulative_path: /x/{meter}\n" + ONE_METER,
            "only placeholder",
        ),
        (
            "    api_keys: [{key: a, valid_from: 2026-01-02, valid_until: 2026-01-01}]\n"
            "    meters: {incomer: {meter_id: 1, unit: kWh}}\n",
            "before valid_from",
        ),
        ("    api_keys: [a]\n    meters: {incomer: {meter_id: 1, unit: kWh, mode: sum}}\n", "mode"),
        (
            "    api_keys: [a]\n    max_interpolation_gap_secs: 2d\n" + ONE_METER,
            "86400",
        ),
    ],
)
def test_mistakes_are_reported_with_file_and_line(
    tmp_path: Path, section: str, message: str
) -> None:
    found = problems(tmp_path, section)
    assert any(message in p for p in found), found
    assert all("site.yaml:" in p for p in found)


def test_a_key_never_appears_in_an_error(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "    api_keys: ['${ENERKEY_KEY_A}', '${ENERKEY_KEY_A}']\n" + ONE_METER,
    )
    assert any("the same" in p for p in found)
    assert not any("key-a-Secret" in p for p in found)


async def test_the_registry_builds_the_uplink(tmp_path: Path) -> None:
    config = load(
        tmp_path, "    api_keys: [a]\n    meters: {incomer: {meter_id: 4711, unit: kWh}}\n"
    )
    astore = AsyncStore(Store(tmp_path / "q.db"))
    try:
        (uplink,) = build_uplinks(UplinkContext(config, astore, Health()))  # type: ignore[arg-type]
        assert isinstance(uplink, EnerKeyUplink)
        assert uplink.name == "enerkey"
        assert uplink.streams() == {"4711": "incomer"}
    finally:
        await astore.aclose()


def test_the_commented_example_block_is_valid_once_uncommented(tmp_path: Path) -> None:
    root = REPO
    lines = (root / "config.example.yaml").read_text().splitlines()
    start = lines.index("  # enerkey:")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("  #"))
    block = [line[:2] + line[4:] for line in lines[start:end]]  # one level: "  # x" -> "  x"
    active = lines[:start] + block + lines[end:]
    path = tmp_path / "site.yaml"
    path.write_text("\n".join(active) + "\n")
    env = {"WATTICS_USER": "u", "WATTICS_PASSWORD": "p", **SECRETS}
    config = load_config(path, env)
    section = config.uplinks.enerkey
    assert section is not None
    assert [k.valid_until for k in section.api_keys] == [None, date(2027, 12, 31)]
    assert section.meters["incomer"].meter_id == 4711


def test_a_meter_without_its_unit_is_a_config_error_naming_file_line_and_key(
    tmp_path: Path,
) -> None:
    """ "Unit of data is meter default in EnerKey": a guessed kWh for a meter kept in MWh (or
    Wh) in EnerKey is a silent x1000 error, so each meter states its unit (issue 14 #13)."""
    found = problems(
        tmp_path,
        """\
    api_keys: ["${ENERKEY_KEY_A}"]
    meters:
      incomer: {meter_id: 4711, unit: kWh}
      pv: {meter_id: 4712}
""",
    )
    assert len(found) == 1
    assert "site.yaml:12: uplinks.enerkey.meters.pv: unit is required" in found[0]
    assert "EnerKey" in found[0]


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "Australia/Lord_Howe", "Asia/Kathmandu"])
def test_offset_timestamps_in_a_zone_off_the_whole_hour_are_refused(
    tmp_path: Path, zone: str
) -> None:
    """A UTC hour is hh:30 (or hh:45) local there: `...T05:30:00+05:30` is not on the hour as
    written, which the fake (and by the hourly resolution, EnerKey) refuses (issue 14 #12).
    Lord Howe is +10:30 in winter only: every offset the zone has counts."""
    path = tmp_path / "site.yaml"
    text = (BASE + "    api_keys: [a]\n    timestamp_format: offset\n" + ONE_METER).replace(
        "Europe/Helsinki", zone
    )
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, SECRETS)
    (problem,) = [str(p) for p in info.value.problems]
    assert "site.yaml:10: uplinks.enerkey.timestamp_format" in problem
    assert zone in problem and "utc" in problem


def test_offset_timestamps_in_whole_hour_zones_are_fine(tmp_path: Path) -> None:
    config = load(tmp_path, "    api_keys: [a]\n    timestamp_format: offset\n" + ONE_METER)
    assert config.uplinks.enerkey.timestamp_format == "offset"  # type: ignore[attr-defined]
