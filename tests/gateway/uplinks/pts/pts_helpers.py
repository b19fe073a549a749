"""Shared set-up of the PTS uplink tests: config, samples, the uplink on a virtual clock."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from core.health import Health
from core.sample import Sample
from gateway.store.async_store import AsyncStore
from gateway.uplinks.pts import ledger as pts_ledger
from gateway.uplinks.pts.config import PtsConfig
from gateway.uplinks.pts.ledger import PtsSubmission
from gateway.uplinks.pts.uplink import PtsUplink
from tests.fakes.pts import FakePts
from tests.fixtures.pts import KEY
from tests.helpers.clock import ManualClock

NY = ZoneInfo("America/New_York")
#: The December reading the fixture's system 1000 has in PTS, as an epoch second.
DEC_READING_S = datetime(2025, 12, 31, 23, 45, tzinfo=NY).timestamp()
DEC_READING_KWH = 5000.0
#: Average production of the simulated array (system 1000: 10 kW capacity).
AVERAGE_KW = 1.5


def eastern_s(*parts: int) -> float:
    """Epoch seconds of an Eastern wall-clock time (EST or EDT as the date says)."""
    return datetime(*parts, tzinfo=NY).timestamp()  # type: ignore[misc]


def make_config(fake: FakePts, **overrides: Any) -> PtsConfig:
    settings: dict[str, Any] = {
        "subscription_key": KEY,
        "base_url": fake.base_url,
        "path_prefix": fake.prefix,
        "systems": {"pv": {"fk_system": 1000}},
        "status_poll_secs": 60,
        "timeout_secs": 2.0,
        "retry_initial_secs": 0.01,
        "retry_max_secs": 0.02,
        **overrides,
    }
    return PtsConfig.model_validate(settings)


def make_uplink(
    config: PtsConfig, astore: AsyncStore, clock: ManualClock, health: Health | None = None
) -> PtsUplink:
    return PtsUplink(config, store=astore, health=health or Health(), clock=clock)


def energy_wh(ts_s: float, *, average_kw: float = AVERAGE_KW) -> float:
    """The lifetime register of a plausible array, in Wh, at epoch second `ts_s`."""
    hours = (ts_s - DEC_READING_S) / 3600
    return (DEC_READING_KWH + hours * average_kw) * 1000


async def feed(
    astore: AsyncStore,
    start_s: float,
    end_s: float,
    *,
    step_s: float = 900,
    meter: str = "pv",
    stamp_ms: int = 40,
    average_kw: float = AVERAGE_KW,
) -> int:
    """Store a sample every `step_s` in [start_s, end_s), stamped `stamp_ms` after the tick
    (as the poller does); returns how many."""
    samples = []
    ts = start_s
    while ts < end_s:
        samples.append(
            Sample(
                meter,
                int(ts * 1000) + stamp_ms,
                {"energy_active_import": energy_wh(ts, average_kw=average_kw), "power_active": 1.0},
            )
        )
        ts += step_s
    ids = await astore.append(samples)
    assert None not in ids
    return len(samples)


async def ledger(astore: AsyncStore, fk: int = 1000) -> list[PtsSubmission]:
    return await astore.run(pts_ledger.submissions, fk)


def counted(rows: list[PtsSubmission]) -> list[tuple[str, str, float, str]]:
    """(origin, status, MeterValue, MeterDate) of the rows that can count against the quota."""
    return [(r.origin, r.status, r.meter_value, r.meter_date) for r in rows if not r.test]


def alerts(health: Health) -> list[str]:
    return [alert.message for alert in health.alerts if alert.source == "pts"]


async def run_until(
    uplink: PtsUplink, clock: ManualClock, until_s: float, *, max_steps: int = 500
) -> int:
    """Step the uplink, advancing the virtual clock by each pass's delay (at least 1 s),
    until `until_s`; returns the passes made."""
    for passes in range(1, max_steps + 1):
        delay = await uplink.step()
        clock.now = min(until_s, clock.now + max(delay, 1.0))
        if clock.now >= until_s:
            return passes
    raise AssertionError(f"{max_steps} passes did not reach {until_s}")
