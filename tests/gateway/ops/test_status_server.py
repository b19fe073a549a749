"""The status page, /api/status and /metrics of the real daemon on a simulated SDM630 and the
strict fake Wattics: what they show matches the simulator's and the store's truth, they update,
they are read-only, and they never show a secret.

/metrics is parsed with prometheus_client's own parser (prometheus_client 0.26:
prometheus_client.parser.text_string_to_metric_families).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.health import Health
from drivers.simulator import SimulatedMeter
from gateway.daemon import DB_FILE
from gateway.store.reader import StoreReader
from tests.fakes.wattics import FakeWattics
from tests.fixtures.modbus import SDM630_VALUES
from tests.gateway.ops.status_site import (
    PASSWORD,
    STREAM,
    USER,
    Dom,
    get_json,
    get_text,
    status_config,
    status_site,
)
from tests.helpers.eventually import eventually


@pytest.fixture
async def wattics() -> Any:
    async with FakeWattics(USER, PASSWORD, {STREAM}) as fake:
        yield fake


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def store_truth(db: Path) -> tuple[int, int, int | None]:
    """(samples of incomer, its stream's backlog, the oldest waiting) read from the store."""
    with StoreReader(db) as reader, reader.snapshot():
        (cursor,) = [c for c in reader.cursors() if c.stream == STREAM]
        backlog = reader.backlog("incomer", cursor.position)
        (count,) = reader.query("SELECT COUNT(*) FROM samples WHERE meter = 'incomer'")[0]
        return int(count), backlog.rows, backlog.oldest_ts_ms


@pytest.mark.timeout(40)
async def test_metrics_match_the_simulator_and_the_store(
    tmp_path: Path, sdm630_server: tuple[int, SimulatedMeter], wattics: FakeWattics
) -> None:
    health = Health()
    config = status_config(tmp_path, sdm630_server[0], wattics, interval="1s")
    db = tmp_path / DB_FILE
    async with status_site(config, health) as (_, url), aiohttp.ClientSession() as http:
        await wattics.wait_accepted(2, timeout=10)

        async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            async with http.get(f"{url}metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                return samples(await response.text())

        meter = (("meter", "incomer"),)
        first = await scrape()
        # The simulator's truth, in the gateway's units.
        assert first[("meter_gateway_power_active_watts", meter)] == SDM630_VALUES["power_active"]
        assert (
            first[("meter_gateway_energy_active_import_watt_hours", meter)]
            == SDM630_VALUES["energy_active_import"]
        )
        assert first[("meter_gateway_meter_state", (*meter, ("state", "ok")))] == 1.0
        assert first[("meter_gateway_bus_requests_total", (("bus", "plant"),))] > 0
        assert first[("meter_gateway_build_info", (("gateway", "site-1"), ("version", "0.1.0")))]

        # The store's truth: samples stored, and what the stream still has to send.
        async def stored_matches() -> bool:
            scraped = await scrape()
            count, _, _ = store_truth(db)
            return scraped[("meter_gateway_samples_stored_total", meter)] == count

        await eventually(stored_matches, timeout=15, interval=0.3, what="stored == the store's")

        wattics.reject_credentials()  # delivery pauses; the backlog builds up in the store
        key = (("meter", "incomer"), ("stream", STREAM), ("uplink", "wattics"))

        # The figures are measured now and then (every second here, every 10 s on a site) while
        # samples keep arriving: what /metrics shows must be a backlog the store really had
        # since the pause, with the same oldest waiting sample.
        seen: set[tuple[int, int | None]] = set()

        async def backlog_matches() -> bool:
            _, backlog, oldest = store_truth(db)
            seen.add((backlog, oldest))
            scraped = await scrape()
            shown = int(scraped[("meter_gateway_stream_backlog_samples", key)])
            shown_oldest = scraped.get(
                ("meter_gateway_stream_oldest_undelivered_timestamp_seconds", key), 0.0
            )
            _, backlog, oldest = store_truth(db)
            seen.add((backlog, oldest))
            return shown >= 3 and any(
                shown == rows and shown_oldest == (first or 0) / 1000 for rows, first in seen
            )

        await eventually(backlog_matches, timeout=20, interval=0.3, what="backlog == the store's")
        scraped = await scrape()
        assert scraped[("meter_gateway_uplink_paused", (("uplink", "wattics"),))] == 1.0
        assert scraped[("meter_gateway_uplink_retries_total", (("uplink", "wattics"),))] >= 1
        assert scraped[("meter_gateway_stream_oldest_undelivered_age_seconds", key)] >= 1.0
        delivered = scraped[("meter_gateway_uplink_deliveries_total", (("uplink", "wattics"),))]
        assert delivered == wattics.total_accepted()
        assert scraped[("meter_gateway_stream_samples_delivered_total", key)] <= delivered
        assert scraped[("meter_gateway_attention_items", ())] >= 1  # paused


@pytest.mark.timeout(40)
async def test_the_page_shows_every_meter_its_live_value_and_the_backlog_and_updates(
    tmp_path: Path, sdm630_server: tuple[int, SimulatedMeter], wattics: FakeWattics
) -> None:
    """DOM-level (no browser): the server-rendered page and the fragment its script swaps in."""
    health = Health()
    config = status_config(tmp_path, sdm630_server[0], wattics)
    async with status_site(config, health) as (_, url), aiohttp.ClientSession() as http:
        await wattics.wait_accepted(2, timeout=10)
        page = Dom(await get_text(http, url))
        assert page.find(data_meter="incomer", data_field="state") == ["ok"]
        assert page.find(data_meter="incomer", data_field="power_active") == [
            "3.59 kW power active"
        ]
        assert page.find(data_meter="incomer", data_field="energy_active_import") == [
            "12,345.5 kWh energy active import"
        ]
        (backlog,) = page.find(data_uplink="wattics", data_field="backlog")
        assert backlog.endswith("waiting")
        first_as_of = page.find(data_field="as-of")

        sdm630_server[1].set_values({**SDM630_VALUES, "power_active": 1250.0})
        wattics.reject_credentials()

        async def updated() -> bool:
            dom = Dom(await get_text(http, f"{url}fragment"))
            (waiting,) = dom.find(data_uplink="wattics", data_field="backlog")
            return (
                dom.find(data_meter="incomer", data_field="power_active")
                == ["1.25 kW power active"]
                and int(waiting.split()[0].replace(",", "")) >= 4
                and dom.find(data_field="as-of") != first_as_of
                and any("paused" in text for text in dom.find(data_field="attention"))
            )

        await eventually(updated, timeout=15, interval=0.3, what="the fragment to update")


@pytest.mark.timeout(30)
async def test_read_only_and_never_a_secret(
    tmp_path: Path, sdm630_server: tuple[int, SimulatedMeter], wattics: FakeWattics
) -> None:
    health = Health()
    config = status_config(tmp_path, sdm630_server[0], wattics)
    async with status_site(config, health) as (_, url), aiohttp.ClientSession() as http:
        await wattics.wait_accepted(2, timeout=10)
        health.alert("test", f"a cloud echoed the password {PASSWORD} back")  # a leak upstream
        health.uplink("wattics").last_error = f"HTTP 400: bad user {USER}"
        await eventually(lambda: any(a.source == "test" for a in health.alerts))
        for path in ["", "fragment", "api/status", "api/history", "metrics", "static/page.js"]:
            async with http.get(f"{url}{path}") as response:
                text = await response.text()
                assert response.status == 200, path
                assert PASSWORD not in text and USER not in text, path
                assert response.headers["X-Frame-Options"] == "DENY"
                assert "script-src 'self'" in response.headers["Content-Security-Policy"]
                assert response.headers["Cache-Control"] == "no-store"
        status = await get_json(http, f"{url}api/status")
        assert any("***" in a["message"] for a in status["alerts"])
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            async with http.request(method, f"{url}api/status", data=b"x") as response:
                assert response.status == 405, method
        # A page on another site that rebinds its name to 127.0.0.1 is refused (no secret set).
        async with http.get(url, headers={"Host": "attacker.example:8480"}) as response:
            assert response.status == 421
        async with http.get(url, headers={"Host": "localhost:8480"}) as response:
            assert response.status == 200
