"""The `sources: locus:` section: defaults, checks with file:line:key, pure planning helpers."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from core.config_errors import ConfigError
from core.sample import Sample
from gateway.config.loader import load_config
from gateway.config.schema import Config
from gateway.sources.locus.config import LocusConfig, LocusMeterConfig
from gateway.sources.locus.plan import lifetime_segments, locus_time, windows
from gateway.sources.locus.samples import FieldProblem, build_samples, plan_fields
from tests.fixtures.locus import CLIENT_SECRET, PASSWORD, SECRETS

HEAD = """\
gateway: {id: site-42, data_dir: /tmp/mg}
sources:
  locus:
    client_id: ${LOCUS_CLIENT_ID}
    client_secret: ${LOCUS_CLIENT_SECRET}
"""


def load(tmp_path: Path, body: str) -> Config:
    path = tmp_path / "site.yaml"
    path.write_text(HEAD + body)
    return load_config(path, SECRETS)


def problems(tmp_path: Path, body: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, body)
    return [str(p).replace(str(tmp_path) + "/", "") for p in info.value.problems]


def test_defaults_node_ids_and_uplink_references(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
    username: solar-user
    password: ${LOCUS_PASSWORD}
    partner_id: 123
    meters:
      pv-roof: {component_id: 54369}
      pv-carport: {node_id: OB.001EC1111DC9.1, granularity: 15min, interval_secs: 15m}
uplinks:
  wattics:
    username: u
    password: p
    meters: {pv-roof: {id: stream-a}}
""",
    )
    section = config.sources.locus
    assert isinstance(section, LocusConfig)
    assert section.base_url == "https://api.locusenergy.com"
    assert section.grant == "password"
    roof = section.meters["pv-roof"]
    assert roof.interval_secs == 300.0 and roof.granularity == "5min"
    assert {k: (f.channel, f.kind) for k, f in roof.fields.items()} == {
        "W_avg": ("power_active", "value"),
        "Wh_sum": ("energy_active_import", "interval"),
    }
    assert section.window_secs(roof) == 31 * 86_400 - 300  # strictly below the span limit
    assert section.meters["pv-carport"].node_id == "OB.001EC1111DC9.1"
    text = repr(section) + str(section.model_dump())
    assert CLIENT_SECRET not in text and PASSWORD not in text


def test_errors_name_file_line_and_key(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
    meters:
      pv-roof: {component_id: 1, node_id: X}
      pv-2:
        component_id: 2
        fields: {W_avg: power_wrong}
      pv-3:
        component_id: 3
        fields: {Wh_sum: power_active, W_avg: {channel: energy_active_export, kind: value}}
meters:
  - {id: pv-4, bus: nowhere}
""",
    )
    text = "\n".join(found)
    assert "site.yaml:7: sources.locus.meters.pv-roof: give exactly one of" in text
    assert "site.yaml:10: sources.locus.meters.pv-2.fields.W_avg: unknown channel" in text
    assert (
        "site.yaml:11: sources.locus.meters.pv-3: fields.W_avg: energy_active_export is a" in text
    )
    assert CLIENT_SECRET not in text
    found = problems(tmp_path, "    username: solar-user\n    meters: {pv: {component_id: 1}}\n")
    assert found == [
        "site.yaml:3: sources.locus: username and password go together (password grant)"
    ]


def test_node_id_needs_partner_and_meter_ids_are_unique(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
    meters:
      incomer: {component_id: 5}
buses:
  plant: {type: modbus-tcp, host: 127.0.0.1}
meters:
  - {id: incomer, bus: plant, model: sdm630}
""",
    )
    assert found == [
        "site.yaml:7: sources.locus.meters.incomer: meter id 'incomer' is used twice",
    ]
    found = problems(tmp_path, "    meters: {pv: {node_id: OB.1}}\n")
    assert found == [
        "site.yaml:3: sources.locus: partner_id is required to find components by node_id"
    ]


def test_backfill_window_must_stay_inside_the_span_limit(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "    backfill_window_secs: 31d\n    meters: {pv: {component_id: 1}}\n",
    )
    assert any("backfill_window_secs must be below 31 days" in p for p in found)


# -- planning -----------------------------------------------------------------------------------

DAY = 86_400_000


def test_windows_cover_the_gap_once_in_order() -> None:
    cut = list(windows(0, 65 * DAY, 30 * DAY))
    assert cut == [(0, 30 * DAY), (30 * DAY, 60 * DAY), (60 * DAY, 65 * DAY)]
    assert locus_time(1_767_225_600_000) == "2026-01-01T00:00:00"


def test_lifetime_segments_use_each_granularity_within_its_limit() -> None:
    until = 1_773_662_400_000  # 2026-03-16T12:00:00Z
    segments = lifetime_segments(date(2000, 1, 1), until, "5min")
    assert [(s.gran, locus_time(s.start_ms), locus_time(s.end_ms)) for s in segments] == [
        ("yearly", "2000-01-01T00:00:00", "2026-01-01T00:00:00"),
        ("monthly", "2026-01-01T00:00:00", "2026-03-01T00:00:00"),
        ("daily", "2026-03-01T00:00:00", "2026-03-16T00:00:00"),
        ("5min", "2026-03-16T00:00:00", "2026-03-16T12:00:00"),
    ]


def test_intervals_are_stamped_at_their_end_and_counters_add_up() -> None:
    meter = LocusMeterConfig(component_id=1)
    available = {
        "baseFields": [
            {"unit": "W", "aggregations": [{"shortName": "W_avg"}], "granularities": ["5min"]},
            {"unit": "kWh", "aggregations": [{"shortName": "Wh_sum"}], "granularities": ["5min"]},
        ]
    }
    plans = plan_fields(meter, available)
    assert [p.scale for p in plans] == [1.0, 1000.0]  # kWh -> Wh
    objects = [
        {"id": 1, "ts": "2026-01-01T00:05:00+00:00", "Wh_sum": 0.2, "W_avg": 2400, "new": 1},
        {"id": 1, "ts": "2025-12-31T19:00:00-05:00", "Wh_sum": 0.1, "W_avg": 1200},
        {"id": 1, "ts": "2026-01-01T00:10:00+00:00"},  # no data: no sample
        {"id": 1, "ts": "2026-01-01T00:15:00+00:00", "Wh_sum": 0.3},  # in progress
    ]
    start = 1_767_225_600_000
    built = build_samples(
        "pv",
        objects,
        plans,
        counters={"energy_active_import": 1000.0},
        step_ms=300_000,
        start_ms=start,
        end_ms=start + 900_000,
    )
    assert built.samples == [
        Sample("pv", start + 300_000, {"power_active": 1200.0, "energy_active_import": 1100.0}),
        Sample("pv", start + 600_000, {"power_active": 2400.0, "energy_active_import": 1300.0}),
    ]
    assert built.counters == {"energy_active_import": 1300.0}


def test_missing_fields_and_units_are_named() -> None:
    meter = LocusMeterConfig(
        component_id=1, fields={"Wh_sum": "energy_active_import", "X_avg": "frequency"}
    )
    available = {
        "baseFields": [
            {"unit": "V", "aggregations": [{"shortName": "Wh_sum"}], "granularities": ["5min"]}
        ]
    }
    with pytest.raises(FieldProblem) as info:
        plan_fields(meter, available)
    assert "field X_avg does not exist for this component (has: Wh_sum)" in str(info.value)
    assert "field Wh_sum is in 'V', channel energy_active_import in 'Wh'" in str(info.value)
