"""Secrets never leave the box: not in logs, MQTT payloads, `check-config` output or errors.

Every secret the config can hold gets a distinctive value (Wattics user and password, both
EnerKey keys, the PTS key, the MQTT password). Then everything a user, a log collector or an
MQTT subscriber can see is grepped for each value, for a distinctive part of it (a truncated
leak is a leak) and for the Wattics basic-auth token:

- `check-config` on a valid file, and on files whose errors sit right next to secrets;
- the daemon as a real process at DEBUG, for a few seconds of polling and sending, with each
  cloud refusing credentials at some point (the paths that write alerts and errors), and its
  MQTT traffic: a real Mosquitto that requires the password, watched on `#`.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from core.sample import Sample
from drivers.simulator import serve_modbus_tcp
from gateway.daemon import DB_FILE
from gateway.store.database import Store
from gateway.timefmt import HOUR_MS, floor_hour_ms
from tests.fakes.enerkey import FakeEnerKey
from tests.fakes.pts import FakePts, FakeSystem
from tests.fakes.wattics import FakeWattics
from tests.faults.conftest import sdm630_meters
from tests.fixtures.modbus import SDM630_VALUES
from tests.fixtures.mosquitto import MosquittoBroker
from tests.helpers.eventually import eventually
from tests.paths import REPO

#: env name -> value. The middle of each value is a token found nowhere else.
SECRETS = {
    "WATTICS_USER": "wattics-user-QzT81vXa",
    "WATTICS_PASSWORD": "wattics-pass-Rk27wPmd-end",
    "ENERKEY_KEY_A": "enerkey-key-A-Hc55yLqe-end",
    "ENERKEY_KEY_B": "enerkey-key-B-Ub43nJso-end",
    "PTS_KEY": "pts-key-Wm90tGfr-end",
    "MQTT_PASSWORD": "mqtt-pass-Ev62kDzb-end",
}
WATCHER = ("watcher", "watcher-password")


def needles() -> dict[str, str]:
    """What must not appear: each secret, its distinctive token, the basic-auth token."""
    found = {}
    for name, value in SECRETS.items():
        found[name] = value
        found[f"{name} (part)"] = value.split("-")[-2] if value.endswith("-end") else value[-8:]
    pair = f"{SECRETS['WATTICS_USER']}:{SECRETS['WATTICS_PASSWORD']}".encode()
    found["wattics basic auth"] = base64.b64encode(pair).decode()
    return found


def assert_no_secret(where: str, text: str) -> None:
    leaks = [name for name, needle in needles().items() if needle in text]
    assert leaks == [], f"{where} shows {leaks}"


def config_text(data_dir: Path, ports: dict[str, int], urls: dict[str, str]) -> str:
    return f"""\
gateway: {{id: secrets, timezone: UTC, data_dir: "{data_dir}", clock_check: none}}
buses:
  plant: {{type: modbus-tcp, host: 127.0.0.1, port: {ports["modbus"]}, timeout_secs: 0.5}}
meters:
  - {{id: m1, bus: plant, unit: 1, model: sdm630, interval_secs: 250ms}}
uplinks:
  wattics:
    url: "{urls["wattics"]}"
    username: ${{WATTICS_USER}}
    password: ${{WATTICS_PASSWORD}}
    retry_initial_secs: 0.05
    auth_probe_secs: 0.2
    meters: {{m1: {{id: s-m1}}}}
  enerkey:
    base_url: "{urls["enerkey"]}"
    api_keys: ["${{ENERKEY_KEY_A}}", "${{ENERKEY_KEY_B}}"]
    retry_initial_secs: 0.05
    meters: {{m1: {{meter_id: 4711, unit: kWh}}}}
  pts:
    subscription_key: ${{PTS_KEY}}
    base_url: "{urls["pts"]}"
    path_prefix: /ptsstaging
    retry_initial_secs: 0.05
    systems: {{m1: {{fk_system: 1000}}}}
mqtt:
  host: 127.0.0.1
  port: {ports["mqtt"]}
  username: gateway
  password: ${{MQTT_PASSWORD}}
  topic_prefix: mg
  publish_interval_secs: 0.3
  publish_values: true
  homeassistant_discovery: true
"""


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--log-level", "DEBUG", "check-config", str(path)],
        cwd=REPO,
        env={**os.environ, **SECRETS},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


URLS = {"wattics": "https://w.example/", "enerkey": "https://e.example", "pts": "https://p.example"}
#: Config errors placed next to (or on) a secret: the message must name the key, not the value.
BROKEN = {
    "three enerkey keys": ('api_keys: ["${ENERKEY_KEY_A}"', 'api_keys: ["${ENERKEY_KEY_A}", 7'),
    "a key entry with a bad date": (
        'api_keys: ["${ENERKEY_KEY_A}"',
        'api_keys: [{key: "${ENERKEY_KEY_A}", valid_from: "soon"}',
    ),
    "a password that is a list": (
        "password: ${WATTICS_PASSWORD}",
        'password: ["${WATTICS_PASSWORD}"]',  # quoted: `[${` would be YAML's own error
    ),
    "a colon in the user": ("username: ${WATTICS_USER}", 'username: "${WATTICS_USER}:x"'),
    "an unknown key beside a secret": (
        "subscription_key: ${PTS_KEY}",
        "subscription_key: ${PTS_KEY}\n    api_key: ${PTS_KEY}",
    ),
    "a secret as the port": ("port: 1883", "port: ${MQTT_PASSWORD}"),
}


def test_check_config_never_prints_a_secret(tmp_path: Path) -> None:
    valid = config_text(tmp_path / "data", {"modbus": 502, "mqtt": 1883}, URLS)
    path = tmp_path / "site.yaml"
    path.write_text(valid)
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert_no_secret("check-config", result.stdout + result.stderr)
    for name, (old, new) in BROKEN.items():
        assert old in valid, name
        path.write_text(valid.replace(old, new, 1))
        result = check_config(path)
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert "error:" in result.stderr, name
        assert_no_secret(f"check-config with {name}", result.stdout + result.stderr)


def _seed_enerkey_hours(db: Path) -> None:
    """Samples around two past hours, so EnerKey has hourly readings to push at once."""
    hour = floor_hour_ms(int(time.time() * 1000)) - 2 * HOUR_MS
    stamps = [hour - 60_000, hour + 60_000, hour + HOUR_MS + 60_000]
    with Store(db) as store:
        store.append([Sample("m1", ts, SDM630_VALUES) for ts in stamps])


@pytest.fixture
def passwords(tmp_path: Path) -> Path:
    """A Mosquitto password file: the gateway (with the secret) and a watcher."""
    path = tmp_path / "mosquitto.passwd"
    for user, password, create in (("gateway", SECRETS["MQTT_PASSWORD"], ["-c"]), (*WATCHER, [])):
        subprocess.run(
            ["mosquitto_passwd", "-b", *create, str(path), user, password],
            check=True,
            capture_output=True,
        )
    return path


@pytest.mark.timeout(60)
async def test_the_daemon_at_debug_and_its_mqtt_traffic_never_show_a_secret(
    tmp_path: Path, passwords: Path, mosquitto_factory: Callable[[str], MosquittoBroker]
) -> None:
    # The broker requires the password: a gateway that did not send it would see no traffic.
    broker = mosquitto_factory(f"allow_anonymous false\npassword_file {passwords}\n")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _seed_enerkey_hours(data_dir / DB_FILE)
    seen: list[str] = []
    async with (
        serve_modbus_tcp(sdm630_meters(1)) as modbus,
        FakeWattics(SECRETS["WATTICS_USER"], SECRETS["WATTICS_PASSWORD"], {"s-m1"}) as wattics,
        # Key A is not EnerKey's: the gateway must switch to B, naming A by label only.
        FakeEnerKey({"A": "some-other-key", "B": SECRETS["ENERKEY_KEY_B"]}, {4711}) as enerkey,
        # PTS does not know our key: "Bad API Key" pauses the uplink with an alert.
        FakePts("not-our-pts-key", {1000: FakeSystem(1000)}) as pts,
        aiomqtt.Client(
            broker.host, broker.port, identifier="watcher", username=WATCHER[0], password=WATCHER[1]
        ) as watcher,
    ):
        await watcher.subscribe("#", qos=1)

        async def watch() -> None:
            async for message in watcher.messages:
                seen.append(f"{message.topic} {bytes(message.payload)!r}")  # type: ignore[arg-type]

        watching = asyncio.get_running_loop().create_task(watch(), name="mqtt-watcher")
        config = tmp_path / "site.yaml"
        urls = {"wattics": wattics.url, "enerkey": enerkey.url, "pts": pts.base_url}
        config.write_text(config_text(data_dir, {"modbus": modbus.port, "mqtt": broker.port}, urls))
        log_path = tmp_path / "daemon.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *(
                    sys.executable,
                    "-m",
                    "gateway",
                    "--log-level",
                    "DEBUG",
                    "run",
                    "-c",
                    str(config),
                ),
                cwd=REPO,
                env={**os.environ, **SECRETS},
                stdout=log,
                stderr=log,
            )
        try:
            await wattics.wait_accepted(3, timeout=15)
            wattics.reject_credentials()  # now Wattics refuses: pause, alert, probes
            await eventually(
                lambda: (
                    any("credentials refused" in m for m in seen)
                    and any("switched to key B" in m for m in seen)
                    and enerkey.pushes
                ),
                timeout=10,
                interval=0.1,
                what="the refusals to reach MQTT",
            )
            process.terminate()
            assert await asyncio.wait_for(process.wait(), 10) == 0
            await asyncio.sleep(0.3)  # the last retained messages
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)

    # The secrets were in use: each service took what only the right secret opens.
    assert wattics.total_accepted() >= 3 and {p.key for p in enerkey.pushes} == {"B"}
    assert pts.calls, "the PTS uplink never called"
    log_text = log_path.read_text(errors="replace")
    assert " DEBUG " in log_text and "running" in log_text  # it did log at DEBUG
    assert_no_secret("the daemon's log", log_text)
    assert any("/values " in m for m in seen) and any("uplinks/pts/state" in m for m in seen)
    assert_no_secret("MQTT traffic", "\n".join(seen))
    assert_no_secret("the broker's log", broker.log_path.read_text(errors="replace"))
