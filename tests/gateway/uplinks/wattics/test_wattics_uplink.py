"""The Wattics uplink end to end: a real temp-dir store, the strict fake on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pydantic
import pytest

from core.health import Health
from core.sample import Sample
from gateway.store.async_store import AsyncStore
from gateway.store.database import Store
from gateway.timefmt import local_iso8601_ms
from gateway.uplinks.wattics.config import WatticsConfig
from gateway.uplinks.wattics.uplink import READ_BATCH, WatticsUplink
from tests.fakes.wattics import FakeWattics
from tests.fixtures.wattics import PASSWORD, STREAMS, USERNAME
from tests.helpers.eventually import eventually

TZ = "Europe/Dublin"
START_MS = 1_729_987_200_000  # 2024-10-27T00:00:00Z: the Dublin autumn change is in the data
STEP_MS = 60_000


@pytest.fixture
async def astore(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    astore = AsyncStore(Store(tmp_path / "queue.db"))
    yield astore
    await astore.aclose()


def make_config(fake: FakeWattics, meters: dict[str, str], **overrides: Any) -> WatticsConfig:
    settings: dict[str, Any] = {
        "url": fake.url,
        "username": USERNAME,
        "password": PASSWORD,
        "meters": {meter: {"id": stream} for meter, stream in meters.items()},
        "timeout_secs": 2.0,
        "retry_initial_secs": 0.01,
        "retry_max_secs": 0.02,
        "auth_probe_secs": 0.05,
        # Group commits come quickly here, so tests can watch the durable cursor.
        "commit_every_secs": 0.05,
        **overrides,
    }
    return WatticsConfig.model_validate(settings)


async def append(astore: AsyncStore, samples: list[Sample]) -> list[int]:
    """Store samples; every one must be accepted (their ids, in order)."""
    ids = await astore.append(samples)
    assert None not in ids
    return [i for i in ids if i is not None]


def make_samples(meter: str, count: int, *, first: int = 0) -> list[Sample]:
    return [
        Sample(
            meter,
            START_MS + (first + i) * STEP_MS + 7,
            {
                "voltage_l1": 230.0 + (first + i) / 10,
                "power_active_l1": float(first + i),
                "energy_active_import": 1_000_000.0 + 15.5 * (first + i),
                "frequency": 50.0,
            },
        )
        for i in range(count)
    ]


def expected_stamps(samples: list[Sample]) -> list[str]:
    return [local_iso8601_ms(s.ts_ms, TZ) for s in samples]


def uplink_for(
    fake: FakeWattics, astore: AsyncStore, health: Health, meters: dict[str, str], **kw: Any
) -> WatticsUplink:
    name = kw.pop("name", "wattics")
    return WatticsUplink(
        make_config(fake, meters, **kw), store=astore, health=health, timezone=TZ, name=name
    )


@contextlib.asynccontextmanager
async def running(uplink: WatticsUplink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.get_running_loop().create_task(uplink.run(), name="uplink-under-test")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def cursor(astore: AsyncStore, stream: str = "stream-a", uplink: str = "wattics") -> int:
    return await astore.cursor(uplink, stream)


async def wait_cursor(
    astore: AsyncStore, target: int, stream: str = "stream-a", uplink: str = "wattics"
) -> None:
    """Wait until the committed cursor reaches `target` (committed at once when caught up)."""

    async def reached() -> bool:
        return await cursor(astore, stream, uplink) >= target

    await eventually(reached, what=f"the cursor of {uplink}/{stream} to reach {target}")


def posts(fake: FakeWattics) -> list[int]:
    return [status for _, method, status in fake.history if method == "POST"]


# -- the happy path -----------------------------------------------------------------------------


async def test_delivers_every_sample_in_order_exactly_once(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    health = Health()
    total = READ_BATCH + 100  # more than one read batch, across the DST change
    backlog = make_samples("incomer", total)
    ids = await append(astore, backlog)
    uplink = uplink_for(fake_wattics, astore, health, {"incomer": "stream-a"})
    async with running(uplink):
        await fake_wattics.wait_accepted(total)
        live = make_samples("incomer", 5, first=total)
        live_ids = await append(astore, live)  # arrives while the uplink waits, caught up
        await fake_wattics.wait_accepted(total + 5)
        await wait_cursor(astore, live_ids[-1])

    sent = fake_wattics.delivered("stream-a")
    assert [p["tsISO8601"] for p in sent] == expected_stamps(backlog + live)
    assert fake_wattics.all_discarded() == []
    assert posts(fake_wattics) == [200] * (total + 5)  # exactly once: nothing was repeated
    first, last = sent[0], sent[-1]
    assert first == {
        "id": "stream-a",
        "tsISO8601": "2024-10-27T01:00:00.007+01:00",
        "v_1": 230.0,
        "aP_1": 0.0,
        "pC_1": 1_000_000.0,  # Wh, as stored: no unit conversion on the way out
    }
    assert last["pC_1"] == 1_000_000.0 + 15.5 * (total + 4)
    assert await cursor(astore) == live_ids[-1] > ids[-1]
    state = health.uplink("wattics")
    assert state.delivered == total + 5
    assert state.retries == 0 and state.parked == 0 and state.paused_reason is None
    assert state.last_success_ms is not None


async def test_samples_without_wattics_channels_are_passed_over(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    samples = make_samples("m", 3)
    ids = await append(astore, [samples[0], Sample("m", samples[0].ts_ms + 1, {"frequency": 50.0})])
    ids += await append(astore, samples[1:])
    uplink = uplink_for(fake_wattics, astore, Health(), {"m": "stream-a"})
    async with running(uplink):
        await fake_wattics.wait_accepted(3)
        await wait_cursor(astore, ids[-1])
    assert uplink.skipped == 1
    assert posts(fake_wattics) == [200, 200, 200]


# -- failures -----------------------------------------------------------------------------------


async def test_two_503_then_success_delivers_once_in_order(
    fake_wattics: FakeWattics, astore: AsyncStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.uplinks.wattics.uplink")
    health = Health()
    samples = make_samples("m", 4)
    ids = await append(astore, samples)
    fake_wattics.fail_next(2, 503)
    uplink = uplink_for(fake_wattics, astore, health, {"m": "stream-a"}, resync_on_start=False)
    async with running(uplink):
        await fake_wattics.wait_accepted(4)
        await wait_cursor(astore, ids[-1])
    assert [p["tsISO8601"] for p in fake_wattics.delivered("stream-a")] == expected_stamps(samples)
    assert posts(fake_wattics) == [503, 503, 200, 200, 200, 200]
    assert fake_wattics.all_discarded() == []
    assert health.uplink("wattics").retries == 2
    assert health.uplink("wattics").delivered == 4
    assert (health.uplink("wattics").last_error or "").startswith("HTTP 503")
    # Logged once when the failure started and once on recovery, not per attempt.
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert messages == [
        'wattics/stream-a: delivery failing (HTTP 503: {"error": "injected 503"}); '
        "retrying, next log on recovery",
        "wattics/stream-a: delivery recovered after 2 failed attempt(s)",
    ]


async def test_garbage_answers_do_not_crash_the_uplink(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    health = Health()
    samples = make_samples("m", 3)
    ids = await append(astore, samples)
    fake_wattics.fail_next(1, 503, retry_after="soon", body=bytes(range(256)) * 10)
    fake_wattics.fail_next(1, 502, retry_after="Wed, 99 Foo 2024 25:61:00 GMT", body=b"<html>")
    fake_wattics.fail_next(3, 400, body=b"\xff" * 200_000)  # then the same packet: parked
    uplink = uplink_for(fake_wattics, astore, health, {"m": "stream-a"}, resync_on_start=False)
    async with running(uplink):
        await fake_wattics.wait_accepted(2)
        await wait_cursor(astore, ids[-1])
    stamps = [p["tsISO8601"] for p in fake_wattics.delivered("stream-a")]
    assert stamps == expected_stamps(samples[1:])
    assert posts(fake_wattics) == [503, 502, 400, 400, 400, 200, 200]
    (letter,) = await astore.dead_letters("wattics")
    assert letter.sample_id == ids[0]
    assert letter.status == 400
    assert 0 < len(letter.body) <= 4000  # cut, not the whole 200 kB
    assert health.uplink("wattics").parked == 1


async def test_dropped_connections_are_retried(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    health = Health()
    samples = make_samples("m", 3)
    ids = await append(astore, samples)
    fake_wattics.drop_connections(2)
    uplink = uplink_for(fake_wattics, astore, health, {"m": "stream-a"}, resync_on_start=False)
    async with running(uplink):
        await fake_wattics.wait_accepted(3)
        await wait_cursor(astore, ids[-1])
    assert posts(fake_wattics) == [0, 0, 200, 200, 200]
    assert [p["tsISO8601"] for p in fake_wattics.delivered("stream-a")] == expected_stamps(samples)
    assert health.uplink("wattics").retries == 2
    assert fake_wattics.all_discarded() == []


async def test_timeouts_are_retried(fake_wattics: FakeWattics, astore: AsyncStore) -> None:
    health = Health()
    samples = make_samples("m", 3)
    ids = await append(astore, samples)
    fake_wattics.slow(0.3)  # longer than the client's timeout
    uplink = uplink_for(
        fake_wattics, astore, health, {"m": "stream-a"}, resync_on_start=False, timeout_secs=0.1
    )
    async with running(uplink):
        await eventually(lambda: health.uplink("wattics").retries >= 2)
        assert "TimeoutError" in (health.uplink("wattics").last_error or "")
        fake_wattics.slow(0)
        await fake_wattics.wait_accepted(3)
        await wait_cursor(astore, ids[-1])
    assert [p["tsISO8601"] for p in fake_wattics.delivered("stream-a")] == expected_stamps(samples)
    # A timed-out request may still have been processed: Wattics discards the re-send, so the
    # discarded list here holds only copies of the first packet.
    assert {p["tsISO8601"] for p in fake_wattics.all_discarded()} <= {expected_stamps(samples)[0]}
    assert health.uplink("wattics").delivered == 3


async def test_retry_after_is_honoured(fake_wattics: FakeWattics, astore: AsyncStore) -> None:
    await append(astore, make_samples("m", 2))
    fake_wattics.fail_next(1, 429, retry_after=0.3)
    uplink = uplink_for(fake_wattics, astore, Health(), {"m": "stream-a"}, resync_on_start=False)
    async with running(uplink):
        await fake_wattics.wait_accepted(2)
    (t_fail, _, first), (t_retry, _, second) = fake_wattics.history[:2]
    assert (first, second) == (429, 200)
    assert t_retry - t_fail >= 0.3  # the backoff alone would have waited at most 0.02 s


async def test_rejected_packet_is_parked_and_later_ones_still_arrive(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    health = Health()
    samples = make_samples("m", 5)
    ids = await append(astore, samples)
    bad = samples[2]
    fake_wattics.reject_matching(lambda p: p.get("aP_1") == 2.0, 400, "implausible reading")
    uplink = uplink_for(fake_wattics, astore, health, {"m": "stream-a"}, max_attempts_rejected=3)
    async with running(uplink):
        await fake_wattics.wait_accepted(4)
        await wait_cursor(astore, ids[-1])

    delivered = [p["tsISO8601"] for p in fake_wattics.delivered("stream-a")]
    assert delivered == expected_stamps([s for s in samples if s is not bad])
    assert posts(fake_wattics).count(400) == 3
    (letter,) = await astore.dead_letters("wattics")
    assert letter.stream == "stream-a"
    assert letter.sample_id == ids[2]
    assert letter.status == 400
    assert "implausible reading" in letter.body
    assert letter.attempts == 3
    assert f'"tsISO8601":"{local_iso8601_ms(bad.ts_ms, TZ)}"' in letter.payload
    state = health.uplink("wattics")
    assert (state.parked, state.delivered, state.retries) == (1, 4, 2)
    assert any("dead-letter" in alert.message for alert in health.alerts)


async def test_refused_credentials_pause_everything_and_lose_nothing(
    fake_wattics: FakeWattics, astore: AsyncStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    health = Health()
    first_a, first_b = make_samples("a", 3), make_samples("b", 3)
    await append(astore, first_a + first_b)
    fake_wattics.reject_credentials()
    uplink = uplink_for(fake_wattics, astore, health, {"a": "stream-a", "b": "stream-b"})
    async with running(uplink):
        await eventually(lambda: health.uplink("wattics").paused_reason is not None)
        assert uplink.paused
        more_a = make_samples("a", 2, first=3)
        await append(astore, more_a)  # data keeps arriving while paused: kept
        await asyncio.sleep(0.3)  # six probe periods
        assert fake_wattics.total_accepted() == 0
        assert fake_wattics.requests < 20  # probing slowly, not hammering
        assert "401" in (health.uplink("wattics").paused_reason or "")
        fake_wattics.accept_credentials(USERNAME, PASSWORD)
        await fake_wattics.wait_accepted(8)
        await eventually(lambda: health.uplink("wattics").paused_reason is None)
    assert not uplink.paused
    assert [p["tsISO8601"] for p in fake_wattics.delivered("stream-a")] == expected_stamps(
        first_a + more_a
    )
    assert [p["tsISO8601"] for p in fake_wattics.delivered("stream-b")] == expected_stamps(first_b)
    assert fake_wattics.all_discarded() == []
    credential_alerts = [a for a in health.alerts if "credentials" in a.message]
    assert len(credential_alerts) == 1
    assert await astore.dead_letters("wattics") == []
    token = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    assert PASSWORD not in caplog.text and token not in caplog.text
    assert all(PASSWORD not in a.message and token not in a.message for a in health.alerts)


# -- restarts and cursors -----------------------------------------------------------------------


async def test_restart_resends_nothing_acknowledged(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    first, second = make_samples("m", 30), make_samples("m", 20, first=30)
    ids = await append(astore, first)
    meters = {"m": "stream-a"}
    async with running(uplink_for(fake_wattics, astore, Health(), meters, resync_on_start=False)):
        await fake_wattics.wait_accepted(30)
    # Stopped right after Wattics took the last packet: the answer in flight still counts.
    assert await cursor(astore) == ids[-1]
    await append(astore, second)
    async with running(uplink_for(fake_wattics, astore, Health(), meters, resync_on_start=False)):
        await fake_wattics.wait_accepted(50)
    assert len(posts(fake_wattics)) == 50
    assert fake_wattics.all_discarded() == []
    stamps = [p["tsISO8601"] for p in fake_wattics.delivered("stream-a")]
    assert stamps == expected_stamps(first + second)


async def test_resync_skips_what_wattics_already_has_when_the_cursor_is_lost(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    first, second = make_samples("m", 10), make_samples("m", 5, first=10)
    await append(astore, first)
    meters = {"m": "stream-a"}
    async with running(uplink_for(fake_wattics, astore, Health(), meters)):
        await fake_wattics.wait_accepted(10)
    await append(astore, second)
    # A different uplink name has no cursor: the worst case of a crash before any commit.
    fresh = uplink_for(fake_wattics, astore, Health(), meters, name="wattics-new")
    async with running(fresh):
        await fake_wattics.wait_accepted(15)
        await wait_cursor(astore, 1, uplink="wattics-new")
    assert len(posts(fake_wattics)) == 15
    assert fake_wattics.all_discarded() == []
    # Without resync the same situation re-sends everything, which Wattics discards:
    blind = uplink_for(fake_wattics, astore, Health(), meters, name="blind", resync_on_start=False)
    async with running(blind):
        await eventually(lambda: len(fake_wattics.all_discarded()) == 15)


async def test_durable_cursor_lags_acknowledgements_by_at_most_one_group(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    samples = make_samples("m", 120)
    ids = await append(astore, samples)
    position = {sample_id: index + 1 for index, sample_id in enumerate(ids)}
    uplink = uplink_for(
        fake_wattics,
        astore,
        Health(),
        {"m": "stream-a"},
        commit_every_packets=10,
        commit_every_secs=3600,
    )
    worst = 0

    async def all_accepted() -> bool:  # and, until then, how far the cursor lags
        nonlocal worst
        accepted = fake_wattics.total_accepted()
        if accepted >= 120:
            return True
        durable = position.get(await cursor(astore), 0)
        worst = max(worst, accepted - durable)
        return False

    async with running(uplink):
        await eventually(all_accepted, timeout=30, interval=0.002, what="120 packets accepted")
        await wait_cursor(astore, ids[-1])
    assert 0 < worst <= 10 + 1  # one group, plus the packet whose answer is on its way


async def test_caught_up_streams_share_one_commit_per_interval(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    """A quiet site (every stream caught up, a sample now and then) costs one transaction per
    commit_every_secs for all streams together, not one fsync per packet and stream (the SD
    card's wear); stopping commits what is left."""
    store = astore.store
    commits: list[int] = []
    real = store.advance_many

    def counting(uplink: str, rows: list[tuple[str, int, dict[str, str] | None]]) -> None:
        commits.append(len(rows))
        real(uplink, rows)

    store.advance_many = counting  # type: ignore[method-assign]
    meters = {f"m{i}": stream for i, stream in enumerate(sorted(STREAMS))}
    uplink = uplink_for(fake_wattics, astore, Health(), meters, commit_every_secs=0.4)
    last: dict[str, int] = {}
    async with running(uplink):
        for round_ in range(12):
            ids = await append(astore, [make_samples(m, 1, first=round_)[0] for m in meters])
            last = dict(zip(meters.values(), ids, strict=True))
            await fake_wattics.wait_accepted(len(meters) * (round_ + 1))
            await asyncio.sleep(0.1)
    assert fake_wattics.total_accepted() == 48
    assert len(commits) <= 6, commits  # ~1.2 s at one group per 0.4 s, plus the stop
    assert max(commits) > 1  # several streams in one transaction
    for stream, sample_id in last.items():
        assert await cursor(astore, stream) == sample_id  # nothing left uncommitted


async def test_shutdown_is_prompt_with_a_request_in_flight(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    first, second = make_samples("m", 2)
    ids = await append(astore, [first])
    uplink = uplink_for(fake_wattics, astore, Health(), {"m": "stream-a"}, shutdown_grace_secs=0.2)
    async with uplink:
        task = asyncio.get_running_loop().create_task(uplink.run(), name="uplink-under-test")
        await fake_wattics.wait_accepted(1)
        await wait_cursor(astore, ids[0])
        fake_wattics.slow(10)
        await append(astore, [second])
        await eventually(lambda: fake_wattics.in_flight == 1)
        started = time.monotonic()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 1.0
    await uplink.aclose()  # a second close is harmless
    # Only what was acknowledged is committed: the in-flight packet will be sent again.
    assert await cursor(astore) == ids[0]


async def test_shutdown_lets_a_slow_answer_finish_within_the_grace(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    health = Health()
    ids = await append(astore, make_samples("m", 1))
    fake_wattics.slow(0.2)
    uplink = uplink_for(
        fake_wattics,
        astore,
        health,
        {"m": "stream-a"},
        shutdown_grace_secs=2,
        resync_on_start=False,
    )
    async with running(uplink):
        await eventually(lambda: fake_wattics.in_flight == 1)
    assert fake_wattics.total_accepted() == 1
    assert health.uplink("wattics").delivered == 1
    assert await cursor(astore) == ids[0]  # acknowledged during shutdown, committed


# -- concurrency --------------------------------------------------------------------------------


async def test_streams_drain_concurrently_each_in_order(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    meters = {"a": "stream-a", "b": "stream-b", "c": "stream-c", "d": "stream-d"}
    per_meter = {meter: make_samples(meter, 8) for meter in meters}
    await append(astore, [s for batch in zip(*per_meter.values(), strict=True) for s in batch])
    fake_wattics.slow(0.05)
    uplink = uplink_for(fake_wattics, astore, Health(), meters, max_concurrency=4)
    assert uplink.streams() == {stream: meter for meter, stream in meters.items()}
    started = time.monotonic()
    async with running(uplink):
        await fake_wattics.wait_accepted(32)
    elapsed = time.monotonic() - started
    assert fake_wattics.max_in_flight == 4
    assert elapsed < 1.2  # one at a time would take 36 x 0.05 s = 1.8 s (with 4 resync GETs)
    for meter, stream in meters.items():
        stamps = [p["tsISO8601"] for p in fake_wattics.delivered(stream)]
        assert stamps == expected_stamps(per_meter[meter])
    assert fake_wattics.all_discarded() == []


async def test_concurrency_is_bounded(fake_wattics: FakeWattics, astore: AsyncStore) -> None:
    meters = {"a": "stream-a", "b": "stream-b", "c": "stream-c", "d": "stream-d"}
    await append(astore, [s for meter in meters for s in make_samples(meter, 3)])
    fake_wattics.slow(0.02)
    uplink = uplink_for(fake_wattics, astore, Health(), meters, max_concurrency=2)
    async with running(uplink):
        await fake_wattics.wait_accepted(12)
    assert fake_wattics.max_in_flight == 2


def test_one_stream_id_for_two_meters_is_refused(tmp_path: Path) -> None:
    fake = FakeWattics()
    with pytest.raises(ValueError, match="'same' is configured twice"):
        make_config(fake, {"a": "same", "b": "same"})


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 (openssl CLI), as (cert, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


async def test_tls_certificates_are_verified(
    astore: AsyncStore, self_signed: tuple[Path, Path]
) -> None:
    cert, key = self_signed
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    samples = make_samples("m", 2)
    await append(astore, samples)
    async with FakeWattics(USERNAME, PASSWORD, {"stream-a"}, ssl_context=server_ctx) as fake:
        assert fake.url.startswith("https://")
        health = Health()
        untrusting = uplink_for(fake, astore, health, {"m": "stream-a"})
        async with running(untrusting):
            await eventually(lambda: health.uplink("wattics").retries >= 2)
        assert fake.requests == 0  # the handshake failed: nothing was sent
        assert "certificate" in (health.uplink("wattics").last_error or "").lower()

        trusting = WatticsUplink(
            make_config(fake, {"m": "stream-a"}),
            store=astore,
            health=Health(),
            timezone=TZ,
            session_factory=lambda: aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=cert))
            ),
        )
        async with running(trusting):
            await fake.wait_accepted(2)
        stamps = [p["tsISO8601"] for p in fake.delivered("stream-a")]
        assert stamps == expected_stamps(samples)


def test_username_with_a_colon_is_a_config_error() -> None:
    with pytest.raises(pydantic.ValidationError, match="cannot contain ':'"):
        make_config(FakeWattics(), {"m": "s"}, username="site:42")
