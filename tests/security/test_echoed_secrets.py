"""Servers that echo everything they receive must not make the gateway show a secret.

Every cloud the daemon talks to is one hostile aiohttp server that answers each request with
all it was sent (custom headers, query, body) inside the answer the client reads as an error:
- EnerKey: 400 whose text is the echo (it becomes `state.last_error` and a dead letter);
- Wattics: 400 likewise (the basic-auth header, base64, is echoed);
- MTS: service-status OK, then a 400 test-request refusal whose `details` is the echo (the meter
  password goes into an alert);
- Locus: the token request refused (401) with the echo (the client_secret, URL-encoded in the
  form, would go into the alert);
- PTS: a 200 GetSystems whose per-system `error` is the echo (only non-2xx was scrubbed).

The daemon runs as a real process at DEBUG with a real Mosquitto; its log, every MQTT message,
the dead-letter table and `meter-gateway status` / `deadletters` are then searched for each
secret, its distinctive part, its URL-encoded forms and the Wattics basic-auth token.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote, quote_plus

import aiomqtt
import pytest
from aiohttp import web

from core.sample import Sample
from drivers.simulator import serve_modbus_tcp
from gateway.daemon import DB_FILE
from gateway.store.database import Store
from gateway.timefmt import HOUR_MS, floor_hour_ms
from tests.faults.conftest import sdm630_meters
from tests.fixtures.modbus import SDM630_VALUES
from tests.fixtures.mosquitto import MosquittoBroker
from tests.helpers.eventually import eventually
from tests.paths import REPO

#: env name -> value; characters that URL encoding changes, so the encoded form is its own leak.
SECRETS = {
    "WATTICS_USER": "wattics-user-Pd61sNwe",
    "WATTICS_PASSWORD": "wattics-pass/Kq3+Zt=Ha&-end",
    "ENERKEY_KEY_A": "enerkey-key-A-Fz47cYbu-end",
    "ENERKEY_KEY_B": "enerkey-key-B-Jm28vQxo-end",
    "PTS_KEY": "pts-key-Tg52hLwq-end",
    "MTS_TOKEN": "mts-token-Xr83pBvd-end",
    "MTS_METER_PASSWORD": "mts-pw/Nc4+Ue=Lk&-end",
    "LOCUS_ID": "lid-Sa7",
    "LOCUS_SECRET": "locus-secret/Wy9+Ob=Ri&-end",
}
#: Request headers every client sends; the echo leaves them out so the rest fits a snippet.
_BORING = {"host", "accept", "accept-encoding", "user-agent", "content-length", "content-type"}


def needles() -> dict[str, str]:
    found = {}
    for name, value in SECRETS.items():
        if name == "LOCUS_ID":
            continue  # short: masked only where it is a whole value
        found[name] = value
        found[f"{name} (part)"] = value.split("-")[-2] if value.endswith("-end") else value[-8:]
        found[f"{name} (url-encoded)"] = quote(value, safe="")
        found[f"{name} (form-encoded)"] = quote_plus(value)
    pair = f"{SECRETS['WATTICS_USER']}:{SECRETS['WATTICS_PASSWORD']}".encode()
    found["wattics basic auth"] = base64.b64encode(pair).decode()
    return found


def leaks(text: str) -> list[str]:
    return [name for name, needle in needles().items() if needle in text]


def _echo(request: web.Request, body: bytes) -> str:
    headers = [f"{k}={v}" for k, v in request.headers.items() if k.lower() not in _BORING]
    return f"you sent {' '.join(headers)} {request.path_qs} {body.decode('utf-8', 'replace')}"


@asynccontextmanager
async def echo_clouds() -> AsyncIterator[tuple[str, Counter[str]]]:
    """One server for all five clouds (by path prefix); yields its URL and calls per cloud."""
    calls: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        cloud = request.path.split("/")[1]
        calls[cloud] += 1
        echo = _echo(request, body)
        if cloud == "mts" and request.path.endswith("service-status"):
            return web.json_response({"serviceVersion": "9.9", "status": "OK"})
        if cloud == "mts":
            return web.json_response({"details": echo}, status=400)
        if cloud == "locus":
            return web.json_response({"error": "invalid_client", "echo": echo}, status=401)
        if cloud == "pts":
            return web.json_response([{"fk_system": 1000, "error": echo}])
        return web.Response(text=echo, status=400)  # enerkey, wattics

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", calls
    finally:
        await runner.cleanup()


def config_text(data_dir: Path, modbus: int, mqtt: int, url: str) -> str:
    return f"""\
gateway: {{id: echoes, timezone: UTC, data_dir: "{data_dir}", clock_check: none}}
buses:
  plant: {{type: modbus-tcp, host: 127.0.0.1, port: {modbus}, timeout_secs: 0.5}}
meters:
  - {{id: m1, bus: plant, unit: 1, model: sdm630, interval_secs: 250ms}}
sources:
  mts:
    base_url: "{url}/mts"
    token: ${{MTS_TOKEN}}
    retry_initial_secs: 0.05
    retry_max_secs: 0.2
    meters:
      hh1:
        meter_type: ELSTERA1700
        remote_address: "01234567890"
        password: ${{MTS_METER_PASSWORD}}
        immediate: true
  locus:
    base_url: "{url}/locus"
    client_id: ${{LOCUS_ID}}
    client_secret: ${{LOCUS_SECRET}}
    retry_initial_secs: 0.05
    retry_max_secs: 0.2
    auth_probe_secs: 0.2
    meters:
      pv: {{component_id: 54369}}
uplinks:
  wattics:
    url: "{url}/wattics/"
    username: ${{WATTICS_USER}}
    password: ${{WATTICS_PASSWORD}}
    retry_initial_secs: 0.05
    meters: {{m1: {{id: s-m1}}, hh1: {{id: s-hh1}}, pv: {{id: s-pv}}}}
  enerkey:
    base_url: "{url}/enerkey"
    api_keys: ["${{ENERKEY_KEY_A}}", "${{ENERKEY_KEY_B}}"]
    retry_initial_secs: 0.05
    meters: {{m1: {{meter_id: 4711, unit: kWh}}}}
  pts:
    subscription_key: ${{PTS_KEY}}
    base_url: "{url}/pts"
    path_prefix: /ptsstaging
    retry_initial_secs: 0.05
    systems: {{m1: {{fk_system: 1000}}}}
mqtt:
  host: 127.0.0.1
  port: {mqtt}
  topic_prefix: mg
  publish_interval_secs: 0.3
"""


def _seed_enerkey_hours(db: Path) -> None:
    hour = floor_hour_ms(int(time.time() * 1000)) - 2 * HOUR_MS
    with Store(db) as store:
        stamps = [hour - 60_000, hour + 60_000, hour + HOUR_MS + 60_000]
        store.append([Sample("m1", ts, SDM630_VALUES) for ts in stamps])


def _cli(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        env={**os.environ, **SECRETS},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_servers_echoing_our_requests_never_make_a_secret_visible(
    tmp_path: Path, mosquitto_factory: Callable[[str], MosquittoBroker]
) -> None:
    broker = mosquitto_factory("")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _seed_enerkey_hours(data_dir / DB_FILE)
    seen: list[str] = []
    async with (
        serve_modbus_tcp(sdm630_meters(1)) as modbus,
        echo_clouds() as (url, calls),
        aiomqtt.Client(broker.host, broker.port, identifier="watcher") as watcher,
    ):
        await watcher.subscribe("#", qos=1)

        async def watch() -> None:
            async for message in watcher.messages:
                seen.append(f"{message.topic} {bytes(message.payload)!r}")  # type: ignore[arg-type]

        watching = asyncio.get_running_loop().create_task(watch(), name="mqtt-watcher")
        config = tmp_path / "site.yaml"
        config.write_text(config_text(data_dir, modbus.port, broker.port, url))
        log_path = tmp_path / "daemon.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "gateway", "--log-level", "DEBUG", "run"),
                *("-c", str(config)),
                cwd=REPO,
                env={**os.environ, **SECRETS},
                stdout=log,
                stderr=log,
            )

        def reported() -> bool:
            text = "\n".join(seen)
            alerts = [m for m in seen if "/alerts " in m]
            return (
                all(calls[c] for c in ("mts", "locus", "pts", "enerkey", "wattics"))
                and any("test-request refused" in m for m in alerts)  # MTS
                and any("locus" in m and "refused" in m for m in alerts)
                and any("PTS system 1000" in m for m in alerts)
                and '"last_error":"HTTP 400' in text  # EnerKey / Wattics state
            )

        try:
            await eventually(reported, timeout=40, interval=0.1, what="every echo to be reported")
            process.terminate()
            assert await asyncio.wait_for(process.wait(), 15) == 0
            await asyncio.sleep(0.3)  # the last retained messages
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)

    log_text = log_path.read_text(errors="replace")
    assert "you sent" in log_text  # the echoes did reach the log (masked)
    assert any("uplinks/enerkey/state" in m and "you sent" in m for m in seen)
    with sqlite3.connect(data_dir / DB_FILE) as db:
        dead = json.dumps(db.execute("SELECT * FROM dead_letters").fetchall(), default=str)
    db.close()
    assert "you sent" in dead
    surfaces = {
        "the daemon's log": log_text,
        "MQTT traffic": "\n".join(seen),
        "the dead-letter table": dead,
        "meter-gateway status": _cli("status", "-c", str(config)),
        "meter-gateway deadletters": _cli("deadletters", "-c", str(config)),
        "meter-gateway pts status": _cli("pts", "status", "-c", str(config)),
    }
    shown = {where: leaks(text) for where, text in surfaces.items() if leaks(text)}
    assert shown == {}, json.dumps(shown, indent=1)
