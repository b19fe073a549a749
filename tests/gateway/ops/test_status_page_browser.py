"""The status page in a real browser (Debian's headless Chromium, driven over DevTools): every
meter, its live value and the uplink backlog appear, and the page's own script updates them
without a reload; on a phone's screen nothing runs off the side. A screenshot is written to
the test's temp dir for a human to look at.

Without a usable Chromium this test skips and says why; the DOM-level test of the same page
(test_status_server.py) still runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.health import Health
from drivers.simulator import SimulatedMeter
from tests.fakes.wattics import FakeWattics
from tests.fixtures.modbus import SDM630_VALUES
from tests.gateway.ops.chromium import Chromium, ChromiumUnavailable
from tests.gateway.ops.status_site import PASSWORD, STREAM, USER, status_config, status_site
from tests.helpers.eventually import eventually

VALUE = 'document.querySelector(\'[data-meter="incomer"] [data-field="{}"] .num\')?.textContent'
BACKLOG = 'document.querySelector(\'[data-uplink="wattics"] [data-field="backlog"] .num\')'


@pytest.fixture
async def wattics() -> Any:
    async with FakeWattics(USER, PASSWORD, {STREAM}) as fake:
        yield fake


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_the_page_in_a_real_browser_shows_and_updates_meters_and_backlog(
    tmp_path: Path, sdm630_server: tuple[int, SimulatedMeter], wattics: FakeWattics
) -> None:
    health = Health()
    config = status_config(tmp_path, sdm630_server[0], wattics)
    async with status_site(config, health) as (_, url):
        await wattics.wait_accepted(2, timeout=10)
        try:
            browser = Chromium(tmp_path / "chromium-profile")
            await browser.__aenter__()
        except ChromiumUnavailable as exc:
            pytest.skip(f"no usable Chromium on this box: {exc}")
        try:
            await browser.phone()
            await browser.open(url)
            assert await browser.evaluate(VALUE.format("power_active")) == "3.59 kW"
            assert await browser.evaluate(VALUE.format("energy_active_import")) == "12,345.5 kWh"
            state = 'document.querySelector(\'[data-meter="incomer"] [data-field="state"]\')'
            assert await browser.evaluate(f"{state}.textContent") == "ok"
            assert await browser.evaluate(f"{BACKLOG} !== null")
            await browser.evaluate("window.__sameDocument = true")

            # Live: the page's script swaps in fresh facts; no reload (the marker survives).
            sdm630_server[1].set_values({**SDM630_VALUES, "power_active": 1250.0})
            wattics.reject_credentials()

            async def updated() -> bool:
                power = await browser.evaluate(VALUE.format("power_active"))
                backlog = await browser.evaluate(f"{BACKLOG}.textContent")
                return power == "1.25 kW" and int(backlog.replace(",", "")) >= 4

            await eventually(updated, timeout=20, interval=0.25, what="the page to update")
            assert await browser.evaluate("window.__sameDocument") is True
            attention = "document.querySelector('[data-field=\"attention\"]')?.textContent"
            assert "paused" in (await browser.evaluate(attention) or "")
            assert await browser.evaluate("document.getElementById('live').textContent") == "live"
            # Usable on a phone: nothing wider than the screen.
            width = await browser.evaluate("document.documentElement.scrollWidth")
            assert width <= await browser.evaluate("window.innerWidth")
            shot = await browser.screenshot(tmp_path / "status-page-phone.png")
            assert shot.stat().st_size > 10_000
            print(f"screenshot: {shot}")
        finally:
            await browser.close()
