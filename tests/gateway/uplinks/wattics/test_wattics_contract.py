"""The Wattics Data Push API as its document writes it (/work/shared/specs/
wattics-data-push-api.txt), against the strict fake with a real store: refusals are retried
until 200 ("retry transmission until you get status=200"), one stream's refusal pauses only
that stream, re-queues keep chronological order, totals go to the first parameter, the route
follows the `timestamps` setting, and a 200 that is not Wattics' moves nothing."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pydantic
import pytest

from core.health import Health
from core.sample import Sample
from gateway.cli.main import main as cli_main
from gateway.config.loader import load_config
from gateway.daemon import open_store
from gateway.store.async_store import AsyncStore
from gateway.uplinks.wattics.config import WatticsConfig
from gateway.uplinks.wattics.packets import build_packet, encode_packet, encode_sample
from gateway.uplinks.wattics.uplink import WatticsUplink
from tests.fakes.wattics import PATH, UTC_PATH, FakeWattics
from tests.fixtures.wattics import PASSWORD, USERNAME
from tests.gateway.uplinks.wattics.test_wattics_datapoints import MIN, electricity, utc_ms
from tests.gateway.uplinks.wattics.test_wattics_uplink import append, make_config, running
from tests.helpers.eventually import eventually

pytestmark = pytest.mark.timeout(30)

START = utc_ms("2024-06-01T10:00:00")


def uplink(
    fake: FakeWattics, store: AsyncStore, health: Health, meters: dict[str, str], **settings: Any
) -> WatticsUplink:
    config = make_config(fake, meters, **settings)
    return WatticsUplink(config, store=store, health=health, timezone="UTC")


def power(packets: list[dict[str, Any]]) -> list[Any]:
    return [p["aP_1"] for p in packets]


# -- 6. a refused datapoint pauses that stream only, and resumes in order ----------------------


async def test_an_unregistered_datapoint_pauses_only_its_stream_and_resumes_in_order(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    """404 "not found" for a datapoint not registered yet: one alert naming it, no dead letter,
    the other datapoint goes on; once registered, every packet arrives in order."""
    health = Health()
    await append(
        astore,
        [electricity("late", START + i * MIN, i) for i in range(4)]
        + [electricity("ok", START + i * MIN, i) for i in range(4)],
    )
    up = uplink(fake_wattics, astore, health, {"late": "not-yet", "ok": "stream-a"})
    async with running(up):
        await fake_wattics.wait_accepted(4)
        await eventually(lambda: fake_wattics.statuses[404] >= 3)
        assert power(fake_wattics.delivered("stream-a")) == [0, 1, 2, 3]
        assert await astore.dead_letters("wattics", include_requeued=True) == []
        assert health.uplink("wattics").paused_reason is None  # the others are not paused
        paused = health.uplink("wattics").facts["paused_datapoints"]
        assert list(paused) == ["not-yet"] and "404" in paused["not-yet"]
        await append(astore, [electricity("late", START + 10 * MIN, 10)])
        fake_wattics.register("not-yet", "electricity")
        await fake_wattics.wait_accepted(9, timeout=10)
    assert power(fake_wattics.delivered("not-yet")) == [0, 1, 2, 3, 10]
    assert await astore.dead_letters("wattics", include_requeued=True) == []
    alerts = [a.message for a in health.alerts if "not-yet" in a.message]
    assert len(alerts) == 1 and "register it with Wattics" in alerts[0]
    assert health.uplink("wattics").facts["paused_datapoints"] == {}
    assert health.uplink("wattics").parked == 0


async def test_a_forbidden_datapoint_pauses_only_its_stream(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    """403 is "not allowed to the user who owns the token": that resource, not the account."""
    health = Health()
    await append(
        astore,
        [electricity("a", START + i * MIN, i) for i in range(3)]
        + [electricity("b", START + i * MIN, i) for i in range(3)],
    )
    fake_wattics.forbid("stream-b")
    up = uplink(fake_wattics, astore, health, {"a": "stream-a", "b": "stream-b"})
    async with running(up):
        await fake_wattics.wait_accepted(3)
        await eventually(lambda: fake_wattics.statuses[403] >= 2)
        assert not up.paused
        assert power(fake_wattics.delivered("stream-a")) == [0, 1, 2]
        fake_wattics.allow("stream-b")
        await fake_wattics.wait_accepted(6, timeout=10)
    assert power(fake_wattics.delivered("stream-b")) == [0, 1, 2]
    assert next(a for a in health.alerts if "stream-b" in a.message).message.count("403") == 1
    assert await astore.dead_letters("wattics", include_requeued=True) == []


async def test_a_stream_whose_every_packet_is_refused_pauses_and_parks_nothing(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    """400 for every packet (here: the datapoint is registered for single values) is the
    stream's problem, not one packet's: nothing is parked, the stream pauses, and after the
    fix at Wattics every packet arrives in order."""
    health = Health()
    fake_wattics.register("stream-a", "value")
    await append(astore, [electricity("m", START + i * MIN, i) for i in range(4)])
    config = make_config(
        fake_wattics,
        {"m": "stream-a"},
        max_attempts_rejected=2,
        retry_initial_secs=0.3,
        auth_probe_secs=0.6,
    )
    # Every backoff at its ceiling: the pause waits are long enough to fix Wattics in one.
    up = WatticsUplink(config, store=astore, health=health, timezone="UTC", rng=lambda: 1.0)
    async with running(up):
        await eventually(
            lambda: "stream-a" in health.uplink("wattics").facts.get("paused_datapoints", {}),
            timeout=10,
        )
        quiet = await _quiet(fake_wattics, 0.1)
        assert quiet and await astore.dead_letters("wattics", include_requeued=True) == []
        fake_wattics.register("stream-a", "electricity")
        await fake_wattics.wait_accepted(4, timeout=10)
    assert power(fake_wattics.delivered("stream-a")) == [0, 1, 2, 3]
    assert await astore.dead_letters("wattics", include_requeued=True) == []
    assert len([a for a in health.alerts if "every packet" in a.message]) == 1


async def _quiet(fake: FakeWattics, secs: float) -> bool:
    """Wait until the uplink sent nothing for `secs` (it waits in its pause)."""
    for _ in range(200):
        seen = fake.requests
        await asyncio.sleep(secs)
        if fake.requests == seen:
            return True
    return False


# -- 7. a re-queue that Wattics would discard is refused ---------------------------------------


async def test_a_requeue_older_than_the_last_accepted_packet_is_refused(
    fake_wattics: FakeWattics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A packet parked while later ones were accepted: re-queued, Wattics would answer 200 and
    discard it ("will discard all packets not sent chronologically"); the CLI refuses, says
    why, and the letter stays parked."""
    config_path = tmp_path / "site.yaml"
    site = {
        "gateway": {"id": "site", "timezone": "UTC", "data_dir": str(tmp_path)},
        "buses": {"line": {"type": "modbus-tcp", "host": "127.0.0.1"}},  # never opened here
        "meters": [{"id": "m", "bus": "line", "model": "sdm630"}],
        "uplinks": {
            "wattics": {
                "url": fake_wattics.url,
                "username": USERNAME,
                "password": PASSWORD,
                "meters": {"m": {"id": "stream-a"}},
                "max_attempts_rejected": 1,
                "retry_initial_secs": 0.01,
                "retry_max_secs": 0.02,
                "commit_every_secs": 0.05,
            }
        },
    }
    config_path.write_text(json.dumps(site))
    config = load_config(str(config_path))
    store = AsyncStore(open_store(config))
    try:
        fake_wattics.reject_matching(lambda p: p.get("aP_1") == 1, 400, "implausible")
        await append(store, [electricity("m", START + i * MIN, i) for i in range(3)])
        up = WatticsUplink(config.uplinks.wattics, store=store, health=Health(), timezone="UTC")
        async with running(up):
            await fake_wattics.wait_accepted(2)
            await eventually(lambda: len(fake_wattics.rejected) == 1)

            async def parked() -> bool:
                return len(await store.dead_letters("wattics")) == 1

            await eventually(parked)
            fake_wattics._rejecters.clear()  # the reading is fine now: still too late
            assert cli_main(["deadletters", "-c", str(config_path), "--requeue"]) == 1
            out = capsys.readouterr().out
            assert "NOT re-queued" in out and "discards packets not sent chronologically" in out
            # Marked another way (SQL, an older CLI): the uplink refuses it too.
            (letter,) = await store.dead_letters("wattics")
            await store.requeue("wattics", ids=[letter.id], now_ms=0)
            await append(store, [electricity("m", START + 5 * MIN, 5)])  # wakes the stream
            await fake_wattics.wait_accepted(3)

            async def reparked() -> bool:
                return len(await store.dead_letters("wattics")) == 1

            await eventually(reparked)
        assert power(fake_wattics.delivered("stream-a")) == [0, 2, 5]
        assert fake_wattics.all_discarded() == []
    finally:
        await store.aclose()


# -- 8. one total value goes to the first parameter ---------------------------------------------


TOTALS_ONLY = {
    "power_active": 1500.0,
    "power_reactive": -20.0,
    "power_apparent": 1510.0,
    "current": 6.5,
    "voltage_l1": 231.0,
    "energy_active_import": 123_000.0,
}


def test_a_meter_with_totals_only_sends_them_in_the_first_parameter() -> None:
    """ "If you only have one total value for a data point you must use the first parameter"
    (SunSpec model 101/103 `W`, `VA`, `VAr`, `A`; OBIS 1.7.0 / 16.7.0 are totals)."""
    sample = Sample("m", 0, dict(TOTALS_ONLY))
    packet = build_packet(sample, "s", "UTC")
    assert packet is not None
    assert {k: packet[k] for k in ("aP_1", "rP_1", "apP_1", "c_1", "v_1", "pC_1")} == {
        "aP_1": 1500.0,
        "rP_1": -20.0,
        "apP_1": 1510.0,
        "c_1": 6.5,
        "v_1": 231.0,
        "pC_1": 123_000.0,
    }
    assert encode_sample(sample, "s", "UTC") == encode_packet(packet)
    per_phase = build_packet(sample, "s", "UTC", energy_per_phase=True)
    assert per_phase is not None and per_phase["pC_1"] == 123_000.0


def test_per_phase_values_win_over_the_total() -> None:
    values = {**TOTALS_ONLY, "power_active_l1": 500.0, "power_active_l2": 1000.0}
    packet = build_packet(Sample("m", 0, values), "s", "UTC")
    assert packet is not None
    assert (packet["aP_1"], packet["aP_2"]) == (500.0, 1000.0) and "aP_3" not in packet
    assert packet["c_1"] == 6.5  # no per-phase current: the total


async def test_a_totals_only_meter_forwards_its_power(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    await append(astore, [Sample("sunspec", START, dict(TOTALS_ONLY))])
    async with running(uplink(fake_wattics, astore, Health(), {"sunspec": "stream-a"})):
        await fake_wattics.wait_accepted(1)
    (packet,) = fake_wattics.delivered("stream-a")
    assert packet["aP_1"] == 1500.0 and packet["c_1"] == 6.5


# -- 9. the route follows the `timestamps` setting ----------------------------------------------


@pytest.mark.parametrize(
    ("url_path", "timestamps", "route"),
    [
        ("/measurements/v2/unifiedjson", "utc", UTC_PATH),
        ("/measurements/v2/unifiedjson/", "utc", UTC_PATH),
        ("/measurements/v2/unifiedjson_utc/", "local", PATH),
        ("/measurements/v2/unifiedjson_utc", "local", PATH),
    ],
)
async def test_the_route_is_chosen_from_the_setting_not_the_spelling(
    astore: AsyncStore, url_path: str, timestamps: str, route: str
) -> None:
    async with FakeWattics(USERNAME, PASSWORD, site_tz="Europe/Dublin") as fake:
        await append(astore, [electricity("m", START, 1)])
        base = fake.url.removesuffix(PATH)
        config = make_config(fake, {"m": "stream-a"}, url=base + url_path, timestamps=timestamps)
        up = WatticsUplink(config, store=astore, health=Health(), timezone="Europe/Dublin")
        async with running(up):
            await fake.wait_accepted(1)
        assert dict(fake.routes) == {route: 1}
        assert fake.wrong_offset == {}


def test_utc_timestamps_need_a_url_naming_a_wattics_route() -> None:
    with pytest.raises(pydantic.ValidationError, match="UTC timestamps must never reach"):
        WatticsConfig.model_validate(
            {
                "url": "https://proxy.example/push",
                "username": "u",
                "password": "p",
                "timestamps": "utc",
                "meters": {"m": {"id": "x"}},
            }
        )


# -- 10. "Non-secure requests are automatically rejected" -------------------------------------


async def test_the_fake_refuses_plain_http_to_a_remote_host_name(fake_wattics: FakeWattics) -> None:
    """The fake plays a remote Wattics reached without TLS (the gateway's config already
    refuses such a URL: tests/core/test_service_urls.py)."""
    auth = {"Authorization": aiohttp.encode_basic_auth(USERNAME, PASSWORD)}
    packet = {"id": "stream-a", "tsISO8601": "2024-06-01T10:00:00.000+00:00", "value": 1}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            fake_wattics.url,
            json=packet,
            headers={"Host": "web-collector.wattics.com", **auth},
        ) as response,
    ):
        assert response.status == 403
        assert "Non-secure" in await response.text()
    assert fake_wattics.total_accepted() == 0


def test_config_refuses_plain_http_to_wattics() -> None:
    with pytest.raises(pydantic.ValidationError, match="https"):
        WatticsConfig.model_validate(
            {
                "url": "http://web-collector.wattics.com/measurements/v2/unifiedjson/",
                "username": "u",
                "password": "p",
                "meters": {"m": {"id": "x"}},
            }
        )


# -- issue 16 #8: a 200 that is not Wattics' moves nothing --------------------------------------


async def test_a_captive_portal_page_answered_200_is_retried_and_counted(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    health = Health()
    ids = await append(astore, [electricity("m", START + i * MIN, i) for i in range(3)])
    portal = b"<!DOCTYPE html><html><body>Please log in to the hotel Wi-Fi</body></html>"
    fake_wattics.fail_next(2, 200, body=portal, content_type="text/html")
    fake_wattics.fail_next(1, 200, body=b"<html>proxy</html>", content_type="text/plain")
    up = uplink(fake_wattics, astore, health, {"m": "stream-a"}, resync_on_start=False)
    async with running(up):
        await fake_wattics.wait_accepted(3)

        async def caught_up() -> bool:
            return await astore.cursor("wattics", "stream-a") == ids[-1]

        await eventually(caught_up)
    assert power(fake_wattics.delivered("stream-a")) == [0, 1, 2]
    state = health.uplink("wattics")
    assert state.facts["unexpected_answers"] == 3
    assert state.retries >= 3 and state.delivered == 3


# -- issue 16 #12: every boundary within the tolerance, across a restart -----------------------


@dataclass(frozen=True)
class _At:
    ts_ms: int


def test_the_picker_fills_every_boundary_a_sample_reaches_and_resumes_after_a_restart() -> None:
    from zoneinfo import ZoneInfo

    from gateway.uplinks.wattics.interval import IntervalPicker

    def picker() -> IntervalPicker[_At]:
        return IntervalPicker(interval_ms=1000, tolerance_ms=3000, wait_ms=0, tz=ZoneInfo("UTC"))

    first = picker()
    assert first.offer(_At(10_000)) == [(_At(10_000), 10_000)]
    # Nothing for 11..14 s: 11, 12, 13 s are within 3 s of the 10 s sample, 14 s is not.
    decided = first.offer(_At(15_000))
    assert decided == [
        (_At(10_000), 11_000),
        (_At(10_000), 12_000),
        (_At(10_000), 13_000),
        (_At(15_000), 15_000),
    ]
    # A restart after 15 s: the new picker resumes from what was committed.
    second = picker()
    second.resume(first.last_boundary_ms, _At(15_000))
    assert second.offer(_At(15_000)) == [(_At(15_000), None)]  # re-read: already decided
    assert second.offer(_At(17_000)) == [(_At(15_000), 16_000), (_At(17_000), 17_000)]
