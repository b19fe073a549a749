"""Clock integrity: readings taken before the clock is trusted are held and stamped correctly
afterwards (or stored flagged), a clock stepping back never reorders data, and the sync
checks read the real signals (timesyncd's flag file, the kernel's NTP state)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.flags import CLOCK_UNSYNCED
from core.health import Health
from core.sample import Sample, StoredSample
from drivers.config import MeterConfig
from gateway.clock.clocks import EARLIEST_PLAUSIBLE_S
from gateway.clock.sync import STA_UNSYNC, SyncCheck, SyncedClock, kernel_sync
from gateway.config.schema import Config
from gateway.poller import Poller, poller_for
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from tests.helpers.clock import ManualClock

INTERVAL = 0.1
#: 1970-01-11: where a Raspberry Pi without RTC (and without fake-hwclock) boots.
BOOT_1970 = 10 * 86_400.0


def steppable_clock(*, wall_at: float | None = None, synced: bool = True) -> ManualClock:
    """Real monotonic time and sleeps; a wall clock that can be set anywhere (as `date -s`
    would) and a switch (`is_trusted`) for what the sync check says."""
    return ManualClock(wall_at, monotonic=time.monotonic(), speed=1.0, trusted=synced)


class CountingMeter:
    """A meter whose energy register grows 1 Wh per read; remembers the true time of each."""

    def __init__(self, meter_id: str) -> None:
        self.meter_id = meter_id
        self.read_at: list[float] = []

    async def read(self) -> dict[str, float]:
        self.read_at.append(time.time())
        return {"energy_active_import": 1000.0 + len(self.read_at), "power_active": 50.0}


@pytest.fixture
async def astore(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    astore = AsyncStore(Store(tmp_path / "s.sqlite3"))
    yield astore
    await astore.aclose()


def meters(*ids: str) -> list[MeterConfig]:
    return [MeterConfig(id=i, bus="b", model="sdm630", interval_secs=INTERVAL) for i in ids]


async def rows_of(astore: AsyncStore, meter: str) -> list[StoredSample]:
    return await astore.read(meter, 0, 10_000)


async def start(poller: Poller) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(poller.run(), name="poller-under-test")


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0.05)  # an append enqueued just before the cancel commits


def assert_in_time_order(rows: list[StoredSample]) -> None:
    stamps = [row.sample.ts_ms for row in rows]
    assert all(a < b for a, b in itertools.pairwise(stamps)), stamps


async def test_readings_from_a_1970_boot_are_stamped_with_their_real_time_once_ntp_syncs(
    astore: AsyncStore,
) -> None:
    clock = steppable_clock(wall_at=BOOT_1970, synced=False)
    health = Health()
    readers = {"a": CountingMeter("a"), "b": CountingMeter("b")}
    poller = Poller(meters("a", "b"), dict(readers), astore, health, clock=clock)
    task = await start(poller)
    try:
        await asyncio.sleep(0.45)
        assert await astore.call(astore.store.count) == 0  # nothing stamped in 1970
        held = health.clock.held
        assert held == len(readers["a"].read_at) + len(readers["b"].read_at) >= 6

        clock.set_wall(time.time())  # NTP answered: the clock jumps 56 years
        clock.is_trusted = True
        await asyncio.sleep(0.35)
    finally:
        await stop(task)

    assert health.clock.released == held
    for meter_id, reader in readers.items():
        rows = await rows_of(astore, meter_id)
        assert_in_time_order(rows)
        assert len(rows) == len(reader.read_at)  # every reading stored, held ones first
        for row, true_time in zip(rows, reader.read_at, strict=True):
            stamp = row.sample.ts_ms / 1000
            # at (or, aligned as the poller aligns, just before) the read: never a 1970 time
            assert true_time - 0.5 <= stamp <= true_time + 0.03, (stamp, true_time)
            assert row.sample.flags == frozenset()
    assert health.clock.unsynced_stored == 0 and health.clock.held == 0


async def test_a_clock_never_synchronised_stores_flagged_samples_after_the_hold_limit(
    astore: AsyncStore,
) -> None:
    # Yesterday's run stored a sample at the real time; this boot's clock says 1970.
    seeded = Sample("a", round(time.time() * 1000) - 5_000, {"energy_active_import": 1000.0})
    await astore.append([seeded])
    clock = steppable_clock(wall_at=BOOT_1970, synced=False)
    health = Health()
    reader = CountingMeter("a")
    poller = Poller(meters("a"), {"a": reader}, astore, health, clock=clock, hold_max_secs=0.25)
    task = await start(poller)
    try:
        await asyncio.sleep(0.15)
        assert await astore.call(astore.store.count) == 1  # still holding
        await asyncio.sleep(0.45)
    finally:
        await stop(task)

    rows = await rows_of(astore, "a")
    assert_in_time_order(rows)
    stored = rows[1:]
    assert len(stored) == len(reader.read_at) >= 5  # held ones, then each later reading at once
    assert all(row.sample.flags == {CLOCK_UNSYNCED} for row in stored)
    assert stored[0].sample.ts_ms > seeded.ts_ms  # never older than the meter's newest
    assert health.clock.unsynced_stored == len(stored)
    (alert,) = [a.message for a in health.alerts if a.source == "clock"]
    assert "not trusted" in alert and CLOCK_UNSYNCED in alert
    assert "clock_check: none" in alert  # tells the human the way out


async def test_the_hold_is_bounded_by_count_as_well(astore: AsyncStore) -> None:
    clock = steppable_clock(wall_at=BOOT_1970, synced=False)
    health = Health()
    reader = CountingMeter("a")
    poller = Poller(meters("a"), {"a": reader}, astore, health, clock=clock, hold_max_samples=3)
    task = await start(poller)
    try:
        await asyncio.sleep(0.55)
    finally:
        await stop(task)
    rows = await rows_of(astore, "a")
    assert len(reader.read_at) >= 5
    assert len(rows) == len(reader.read_at)  # the 4th reading gave up holding; none lost
    assert all(row.sample.flags == {CLOCK_UNSYNCED} for row in rows)
    assert health.clock.held == 0


async def test_a_clock_stepping_back_an_hour_never_reorders_data_and_says_so_once(
    astore: AsyncStore, caplog: pytest.LogCaptureFixture
) -> None:
    clock = steppable_clock()
    health = Health()
    reader = CountingMeter("a")
    poller = Poller(meters("a"), {"a": reader}, astore, health, clock=clock)
    task = await start(poller)
    try:
        await asyncio.sleep(0.35)
        with caplog.at_level(logging.WARNING, logger="gateway.poller"):
            stepped_ms = round(time.time() * 1000)
            clock.step_wall(-3600.0)  # someone (or a bad time source) sets the clock back
            await asyncio.sleep(0.45)
            restored_ms = round(time.time() * 1000)
            clock.step_wall(3600.0)  # NTP steps it right again
            await asyncio.sleep(0.35)
    finally:
        await stop(task)

    rows = await rows_of(astore, "a")
    assert_in_time_order(rows)
    stamps = [row.sample.ts_ms for row in rows]
    hour_back = range(stepped_ms - 3_600_000 - 1000, restored_ms - 3_600_000 + 1000)
    assert not any(ts in hour_back for ts in stamps)  # nothing stamped an hour back was stored
    assert sum(ts < stepped_ms + 200 for ts in stamps) >= 2  # before the step
    assert any(ts >= restored_ms for ts in stamps)  # storing resumed once the clock came back
    meter = health.meter("a")
    assert meter.refused_older == 0  # the store never had to refuse anything...
    assert meter.refused_clock_step >= 2  # ...the poller counted what it did not offer
    assert health.clock.refused_after_step == meter.refused_clock_step
    assert health.clock.steps == 2 and health.clock.last_step_s == pytest.approx(3600, abs=1)
    (alert,) = [a.message for a in health.alerts if a.source == "clock"]
    assert "stepped back 3600" in alert
    refusals = [r for r in caplog.records if "not newer than the newest stored" in r.message]
    assert len(refusals) == 1  # logged once, counted thereafter


# -- the sync checks ------------------------------------------------------------------------


def test_synced_clock_trusts_the_timesyncd_file_latches_and_asks_again_after_a_step(
    tmp_path: Path,
) -> None:
    flag = tmp_path / "synchronized"
    wall, mono = [EARLIEST_PLAUSIBLE_S + 1000.0], [50.0]
    check = SyncCheck("file", sync_file=flag, kernel=lambda: True)  # the kernel is not asked
    clock = SyncedClock(check, wall=lambda: wall[0], mono=lambda: mono[0])
    assert not clock.trusted()
    flag.touch()  # timesyncd's first synchronisation
    assert clock.trusted()

    flag.unlink()
    wall[0] += 30.0
    mono[0] += 30.0
    assert clock.trusted()  # once synchronised, a steady clock stays trusted
    wall[0] += 3600.0  # ...until it steps
    mono[0] += 1.0
    assert not clock.trusted()
    flag.touch()
    assert clock.trusted()
    wall[0] = BOOT_1970  # a time before this build is never trusted, whatever says so
    assert not clock.trusted()


@pytest.mark.parametrize(
    ("mode", "file_exists", "kernel", "expected"),
    [
        ("auto", False, None, False),
        ("auto", False, True, True),
        ("auto", True, False, True),
        ("kernel", True, False, False),
        ("kernel", False, True, True),
        ("file", False, True, False),
        ("none", False, False, True),
    ],
)
def test_sync_check_modes(
    tmp_path: Path, mode: str, file_exists: bool, kernel: bool | None, expected: bool
) -> None:
    flag = tmp_path / "synchronized"
    if file_exists:
        flag.touch()
    check = SyncCheck(mode, sync_file=flag, kernel=lambda: kernel)  # type: ignore[arg-type]
    assert check.synchronized() is expected


def test_the_kernel_ntp_state_is_read_through_adjtimex() -> None:
    state = kernel_sync()
    assert state is not None  # Linux: adjtimex(2) read-only needs no privilege
    assert state.maxerror_us >= 0
    # adjtimex's own verdict (TIME_ERROR while unsynchronised) agrees with the status bits
    assert state.synchronized == (_adjtimex_says_synchronized() is True)
    if state.status & STA_UNSYNC:
        assert not state.synchronized


async def test_the_gateway_section_configures_the_check_and_the_hold(
    tmp_path: Path, astore: AsyncStore
) -> None:
    flag = tmp_path / "synced-by-my-tool"
    section = {
        "id": "site",
        "clock_check": "file",
        "clock_sync_file": str(flag),
        "clock_hold_max_secs": "2m",
        "clock_hold_max_samples": 500,
    }
    config = Config.model_validate({"gateway": section})
    poller = poller_for(config, {}, astore, Health())
    assert str(flag) in poller.health.clock.check
    assert not poller.clock.trusted()
    flag.touch()
    assert poller.clock.trusted()

    defaults = Config.model_validate({"gateway": {"id": "site"}}).gateway
    assert defaults.clock_check == "auto"
    assert defaults.clock_sync_file == Path("/run/systemd/timesync/synchronized")
    assert (defaults.clock_hold_max_secs, defaults.clock_hold_max_samples) == (900.0, 5_000)
    with pytest.raises(ValidationError, match="clock_check"):
        Config.model_validate({"gateway": {"id": "site", "clock_check": "sometimes"}})


def _adjtimex_says_synchronized() -> bool | None:
    """An independent reading for comparison: adjtimex(2)'s return value, TIME_ERROR (5)
    while the kernel clock is not synchronised (what `timedatectl` reports)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        state = libc.adjtimex(ctypes.create_string_buffer(512))  # struct timex is ~208 bytes
    except (OSError, AttributeError):
        return None
    return None if state < 0 else bool(state != 5)
