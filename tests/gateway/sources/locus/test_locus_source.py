"""The Locus source against the strict fake: real store, real HTTP, a fast shared clock."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.health import Health, MeterState
from core.sample import Sample
from gateway.config.loader import parse_config
from gateway.config.schema import Config
from gateway.sources.base import SourceContext
from gateway.sources.locus.config import LocusConfig
from gateway.sources.locus.plan import locus_time
from gateway.sources.locus.source import LocusEnergySource
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from tests.fakes.locus import FakeLocus, energy_wh
from tests.fixtures.locus import (
    CLIENT_SECRET,
    PASSWORD,
    PV_CARPORT,
    SECRETS,
    fast_clock,
    locus_yaml,
    make_fake,
)
from tests.helpers.clock import ManualClock
from tests.helpers.eventually import eventually

STEP_MS = 300_000
ROOF = "      pv-roof: {component_id: 54369}\n"
CARPORT = '      pv-carport: {node_id: "OB.001EC1111DC9.1"}\n'


def config_for(tmp_path: Path, fake: FakeLocus, meters: str, **kw: object) -> Config:
    text = f'gateway: {{id: site, data_dir: "{tmp_path}"}}\n' + locus_yaml(
        fake.url,
        meters,
        **kw,  # type: ignore[arg-type]
    )
    return parse_config(text, "site.yaml", SECRETS)


@pytest.fixture
async def astore(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    astore = AsyncStore(Store(tmp_path / "gateway.sqlite3"))
    yield astore
    await astore.aclose()


@contextlib.asynccontextmanager
async def running(
    config: Config, astore: AsyncStore, health: Health, clock: ManualClock
) -> AsyncIterator[LocusEnergySource]:
    section = config.sources.locus
    assert isinstance(section, LocusConfig)
    source = LocusEnergySource(section, SourceContext(config, astore, health, clock))
    task = asyncio.get_running_loop().create_task(source.run(), name="source-locus")
    try:
        yield source
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def stored(astore: AsyncStore, meter: str) -> list[Sample]:
    return [s.sample for s in astore.store.read_time_range(meter, 0, 2**62)]


def polls(fake: FakeLocus) -> int:
    """`gran=latest` calls answered 200."""
    return sum(1 for seen in fake.data_requests("latest") if seen.status == 200)


def interval_energy(scale: int, start_ms: int) -> int:
    return energy_wh(scale, start_ms // 60_000, start_ms // 60_000 + 5)


def assert_complete_series(samples: list[Sample], scale: int, first_counter: float) -> None:
    """Every interval once, in order, stamped at its end, counters adding up exactly."""
    counter = first_counter
    for before, after in itertools.pairwise(samples):
        assert after.ts_ms - before.ts_ms == STEP_MS, "a gap or a repeat in the series"
    for sample in samples:
        energy = interval_energy(scale, sample.ts_ms - STEP_MS)
        counter += energy
        assert sample.values["energy_active_import"] == pytest.approx(counter)
        assert sample.values["power_active"] == pytest.approx(energy * 12, abs=0.01)


def seed(astore: AsyncStore, meter: str, ts_ms: int, counter: float) -> None:
    astore.store.append([Sample(meter, ts_ms, {"energy_active_import": counter})])


async def test_older_data_is_backfilled_in_order_then_latest_is_polled(
    tmp_path: Path, astore: AsyncStore, fake_locus: FakeLocus, locus_clock: ManualClock
) -> None:
    now_ms = int(locus_clock.time() * 1000)
    seeded = now_ms - now_ms % STEP_MS - 2 * 3_600_000  # two hours behind
    seed(astore, "pv-roof", seeded, 1_000_000.0)
    health = Health()
    config = config_for(tmp_path, fake_locus, ROOF)
    async with running(config, astore, health, locus_clock):
        await eventually(lambda: health.meter("pv-roof").reads >= 3, timeout=8.0, interval=0.02)
    samples = stored(astore, "pv-roof")[1:]
    assert samples[0].ts_ms == seeded + STEP_MS
    assert len(samples) >= 24  # the two hours, then what latest brought
    assert_complete_series(samples, 1, 1_000_000.0)
    backfill = fake_locus.data_requests("5min")[0]  # one window reaching back to the store
    assert backfill.query["start"] == locus_time(seeded)
    assert backfill.query["tz"] == "UTC" and backfill.query["fields"] == "W_avg,Wh_sum"
    assert all(seen.gzipped for seen in fake_locus.history)
    assert fake_locus.statuses.keys() == {200}
    meter = health.meter("pv-roof")
    assert meter.state is MeterState.OK and not meter.errors
    assert meter.last_read_ts_ms in {sample.ts_ms for sample in samples}


async def test_token_expiring_mid_run_is_renewed_and_nothing_is_lost(
    tmp_path: Path, astore: AsyncStore, locus_clock: ManualClock
) -> None:
    now_ms = int(locus_clock.time() * 1000)
    seed(astore, "pv-roof", now_ms - now_ms % STEP_MS - 3_600_000, 0.0)
    health = Health()
    # A token lives 10 minutes of fast time (0.5 s); renewed 2 minutes early.
    async with make_fake(locus_clock, expires_in=600) as fake:
        config = config_for(tmp_path, fake, ROOF, extra="    token_refresh_margin_secs: 120\n")
        async with running(config, astore, health, locus_clock) as source:
            await eventually(lambda: fake.grants["refresh_token"] >= 1, timeout=8.0, interval=0.02)
            # The server forgets every token early: the next call gets 401, renews, repeats.
            fake.expire_tokens()
            await eventually(lambda: fake.statuses[401] >= 1, timeout=8.0, interval=0.02)
            target = polls(fake) + 3
            await eventually(lambda: polls(fake) >= target, timeout=8.0, interval=0.02)
            tokens = source.workers[0].client.tokens
    assert fake.grants["password"] == 1  # the refresh token did all the renewing
    assert fake.grants["refresh_token"] >= 2 and tokens.refreshes >= 2
    assert fake.statuses[401] >= 1  # answered by renewing, never seen as an error
    samples = stored(astore, "pv-roof")
    assert_complete_series(samples[1:], 1, 0.0)
    assert health.meter("pv-roof").state is MeterState.OK
    assert not health.meter("pv-roof").errors


async def test_outage_is_reported_then_backfilled_in_order(
    tmp_path: Path, astore: AsyncStore, fake_locus: FakeLocus, locus_clock: ManualClock
) -> None:
    now_ms = int(locus_clock.time() * 1000)
    seed(astore, "pv-roof", now_ms - now_ms % STEP_MS - 1_800_000, 500.0)
    health = Health()
    config = config_for(tmp_path, fake_locus, ROOF)
    async with running(config, astore, health, locus_clock):
        await eventually(lambda: polls(fake_locus) >= 1, timeout=8.0, interval=0.02)
        fake_locus.outage(503)
        meter = health.meter("pv-roof")
        await eventually(lambda: meter.state is MeterState.OFFLINE, timeout=8.0, interval=0.02)
        before = astore.store.last_ts("pv-roof")
        # 30 minutes of fast time without Locus (retried with backoff meanwhile).
        await asyncio.sleep(1_800 / locus_clock.speed)
        assert astore.store.last_ts("pv-roof") == before
        fake_locus.restore()
        await eventually(lambda: meter.state is MeterState.OK, timeout=8.0, interval=0.02)
        await eventually(
            lambda: len(fake_locus.data_requests("5min")) >= 2, timeout=8.0, interval=0.02
        )
        after = polls(fake_locus)
        await eventually(lambda: polls(fake_locus) >= after + 2, timeout=8.0, interval=0.02)
    assert meter.errors["server"] >= 3
    assert "503" in (meter.last_error or "")
    samples = stored(astore, "pv-roof")[1:]
    assert samples[-1].ts_ms - before >= 6 * STEP_MS  # the outage's intervals are there
    assert_complete_series(samples, 1, 500.0)


async def test_one_request_at_a_time_for_all_meters(
    tmp_path: Path, astore: AsyncStore, fake_locus: FakeLocus, locus_clock: ManualClock
) -> None:
    fake_locus.slow(0.02)  # a second request would overlap: the fake answers it 429
    health = Health()
    meters = "".join(
        f"      pv-{n}: {{component_id: {cid}, interval_secs: 1m}}\n"
        for n, cid in enumerate([54369, 54370, 54369, 54370])
    )
    config = config_for(tmp_path, fake_locus, meters, extra="    counter_baseline: zero\n")
    async with running(config, astore, health, locus_clock):
        await eventually(
            lambda: all(health.meter(f"pv-{n}").reads >= 3 for n in range(4)),
            timeout=8.0,
            interval=0.02,
        )
    assert fake_locus.max_in_flight == 1
    assert 429 not in fake_locus.statuses
    for n in range(4):
        assert health.meter(f"pv-{n}").state is MeterState.OK


async def test_rate_limit_answer_pauses_and_is_counted(
    tmp_path: Path, astore: AsyncStore, fake_locus: FakeLocus, locus_clock: ManualClock
) -> None:
    health = Health()
    config = config_for(tmp_path, fake_locus, ROOF, extra="    counter_baseline: zero\n")
    async with running(config, astore, health, locus_clock) as source:
        await eventually(lambda: polls(fake_locus) >= 1, timeout=8.0, interval=0.02)
        fake_locus.fail_next(2, 429)
        await eventually(lambda: polls(fake_locus) >= 4, timeout=8.0, interval=0.02)
        gate = source.workers[0].client.gate
    meter = health.meter("pv-roof")
    assert meter.errors["rate_limited"] == 2
    assert gate.rate_limited == 2
    assert meter.state is MeterState.OK
    assert_complete_series(stored(astore, "pv-roof"), 1, 0.0)


async def test_missing_field_is_a_clear_error_and_other_meters_go_on(
    tmp_path: Path,
    astore: AsyncStore,
    fake_locus: FakeLocus,
    locus_clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = Health()
    meters = ROOF + (
        "      pv-bad:\n"
        "        component_id: 54370\n"
        "        fields: {W_avg: power_active, WhExp_max: energy_active_export}\n"
    )
    config = config_for(tmp_path, fake_locus, meters, extra="    counter_baseline: zero\n")
    with caplog.at_level(logging.INFO):
        async with running(config, astore, health, locus_clock):
            await eventually(lambda: polls(fake_locus) >= 3, timeout=8.0, interval=0.02)
    bad = health.meter("pv-bad")
    assert bad.state is MeterState.OFFLINE
    assert bad.errors["config"] == 1
    assert "WhExp_max does not exist" in (bad.last_error or "")
    assert "54370" in (bad.last_error or "")
    alerts = [a for a in health.alerts if a.source == "locus meter pv-bad"]
    assert len(alerts) == 1 and "WhExp_max" in alerts[0].message
    assert "WhExp_max does not exist" in caplog.text
    assert stored(astore, "pv-bad") == []
    assert health.meter("pv-roof").state is MeterState.OK
    assert len(stored(astore, "pv-roof")) > 0
    # Never a secret in the log.
    assert PASSWORD not in caplog.text and CLIENT_SECRET not in caplog.text


async def test_node_id_lookup_and_lifetime_counter_at_first_start(
    tmp_path: Path, astore: AsyncStore, locus_clock: ManualClock
) -> None:
    health = Health()
    now_ms = int(locus_clock.time() * 1000)
    async with make_fake(locus_clock) as fake:
        carport = fake.components[PV_CARPORT]
        carport.since_ms = now_ms - now_ms % 86_400_000 - 400 * 86_400_000  # over a year ago
        gap_start = now_ms - now_ms % STEP_MS - 40 * 86_400_000
        carport.gaps = [(gap_start, gap_start + 2 * 86_400_000 + 7 * 60_000)]
        config = config_for(tmp_path, fake, CARPORT)
        async with running(config, astore, health, locus_clock):
            await eventually(lambda: polls(fake) >= 2, timeout=8.0, interval=0.02)
    lookups = [s for s in fake.history if s.path.endswith("/components")]
    assert lookups[0].query == {"nodeId": "OB.001EC1111DC9.1"}
    assert {s.path for s in fake.data_requests()} == {f"/v3/components/{PV_CARPORT}/data"}
    grans = [s.query["gran"] for s in fake.data_requests()]
    baseline = grans[: grans.index("latest")]  # months or days may be empty on the 1st
    assert baseline[0] == "yearly" and set(baseline) <= {"yearly", "monthly", "daily"}
    samples = stored(astore, "pv-carport")
    midnight = now_ms - now_ms % 86_400_000
    assert samples[0].ts_ms == midnight + STEP_MS
    lifetime = sum(
        energy_wh(2, a, b) for a, b in carport.measured_minutes(carport.since_ms, midnight)
    )
    assert_complete_series(samples, 2, float(lifetime))


async def test_client_credentials_grant(
    tmp_path: Path, astore: AsyncStore, locus_clock: ManualClock
) -> None:
    health = Health()
    async with make_fake(locus_clock, password_grant=False) as fake:
        config = config_for(
            tmp_path, fake, ROOF, password_grant=False, extra="    counter_baseline: zero\n"
        )
        async with running(config, astore, health, locus_clock):
            await eventually(lambda: health.meter("pv-roof").reads >= 1, timeout=8.0, interval=0.02)
    assert fake.grants == {"client_credentials": 1}
    assert health.meter("pv-roof").state is MeterState.OK


async def test_refused_credentials_pause_and_alert(
    tmp_path: Path, astore: AsyncStore, fake_locus: FakeLocus, locus_clock: ManualClock
) -> None:
    health = Health()
    text = f'gateway: {{id: site, data_dir: "{tmp_path}"}}\n' + locus_yaml(fake_locus.url, ROOF)
    config = parse_config(text, "site.yaml", {**SECRETS, "LOCUS_PASSWORD": "wrong"})
    async with running(config, astore, health, locus_clock):
        await eventually(
            lambda: health.meter("pv-roof").errors["auth"] >= 1, timeout=8.0, interval=0.02
        )
        await asyncio.sleep(0.2)
    meter = health.meter("pv-roof")
    assert meter.errors["auth"] == 1  # waits auth_probe_secs (15 fast minutes) to try again
    assert "invalid_grant" in (meter.last_error or "")
    assert "wrong" not in (meter.last_error or "")
    assert [a.source for a in health.alerts] == ["locus meter pv-roof"]
    assert "credentials refused" in health.alerts[0].message
    assert stored(astore, "pv-roof") == []


async def test_a_long_gap_is_read_in_windows_oldest_first(
    tmp_path: Path, astore: AsyncStore, fake_locus: FakeLocus, locus_clock: ManualClock
) -> None:
    now_ms = int(locus_clock.time() * 1000)
    seeded = now_ms - now_ms % STEP_MS - 3 * 3_600_000 - 2 * STEP_MS
    seed(astore, "pv-roof", seeded, 42.0)
    health = Health()
    config = config_for(tmp_path, fake_locus, ROOF, extra="    backfill_window_secs: 1h\n")
    async with running(config, astore, health, locus_clock):
        await eventually(lambda: health.meter("pv-roof").reads >= 1, timeout=8.0, interval=0.02)
    starts = [seen.query["start"] for seen in fake_locus.data_requests("5min")]
    assert starts[:4] == [locus_time(seeded + n * 3_600_000) for n in range(4)]
    assert_complete_series(stored(astore, "pv-roof")[1:], 1, 42.0)


async def test_nothing_is_asked_while_the_clock_is_untrusted(
    tmp_path: Path, astore: AsyncStore, fake_locus: FakeLocus
) -> None:
    clock = fast_clock(trusted=False)
    health = Health()
    config = config_for(tmp_path, fake_locus, ROOF)
    async with running(config, astore, health, clock):
        await eventually(
            lambda: health.meter("pv-roof").errors["clock"] >= 1, timeout=8.0, interval=0.02
        )
    assert fake_locus.data_requests() == []
    assert stored(astore, "pv-roof") == []
