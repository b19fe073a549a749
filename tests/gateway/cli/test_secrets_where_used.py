"""A secret is resolved only where it is used (issue "From install to first forwarded kWh", 2).

With the secrets in `LoadCredential=` files, only the service sees them: an installer's
`sudo meter-gateway check-config ...`, `read`, `scan` and `deadletters` run outside it and must
work all the same. The commands run as real processes with an environment that holds no
secret; each is checked for its exit code and for what it says:

- `check-config` warns (exit 0) and names where it looked: the environment,
  `$CREDENTIALS_DIRECTORY`, `/etc/meter-gateway/credentials/NAME`; `--strict`, or a run by
  systemd (`INVOCATION_ID` set), makes that an error (exit 2);
- `read`, `scan`, `deadletters`, `pts status` need no secret; `pts submit` and `run` do;
- the credential directory the shipped unit loads (`LoadCredential=meter-gateway:<dir>`,
  files named `meter-gateway_NAME` in `$CREDENTIALS_DIRECTORY`) and the directory itself are
  where secrets are found.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from drivers.modbus.register_map import load_builtin
from gateway.config.loader import load_config
from tests.fakes.modbus_device import SimulatedMeter, serve_modbus_tcp
from tests.fixtures.modbus import SDM630_VALUES
from tests.paths import REPO

#: Every uplink's secrets: none of them is set in the commands' environment.
UPLINKS = {
    "wattics": {
        "url": "https://web.wattics.com/api/push",
        "username": "${WATTICS_USER}",
        "password": "${WATTICS_PASSWORD}",
        "meters": {"incomer": {"id": "elec-incomer"}},
    },
    "pts": {
        "subscription_key": "${PTS_KEY}",
        "systems": {"incomer": {"fk_system": 1000, "capacity_kw": 10.0}},
    },
}


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`meter-gateway ARGS` as a real process without any secret in its environment."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=45)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def write_site(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "config.yaml"
    document = {
        "gateway": {"id": "site-42", "data_dir": str(tmp_path / "data"), "clock_check": "none"},
        "buses": {"plant": {"type": "modbus-tcp", "host": "127.0.0.1", "port": port}},
        "meters": [{"id": "incomer", "bus": "plant", "unit": 1, "model": "sdm630"}],
        "uplinks": UPLINKS,
        "mqtt": {"host": "127.0.0.1", "username": "gw", "password": "${MQTT_PASSWORD}"},
    }
    (tmp_path / "data").mkdir()
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Path]:
    meter = SimulatedMeter(load_builtin("sdm630"), unit_id=1)
    meter.set_values(SDM630_VALUES)
    async with serve_modbus_tcp([meter]) as server:
        yield write_site(tmp_path, server.port)


async def test_check_config_warns_about_unset_secrets_and_says_where_it_looked(
    site: Path,
) -> None:
    code, out, err = await cli("check-config", str(site))
    assert code == 0, err
    assert "OK" in out
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 4, err  # Wattics user and password, the PTS key, MQTT's password
    line = next(w for w in warnings if "${WATTICS_PASSWORD}" in w)
    assert f"{site}:" in line and "uplinks.wattics.password:" in line
    assert "environment" in line and "$CREDENTIALS_DIRECTORY" in line
    assert "/etc/meter-gateway/credentials/WATTICS_PASSWORD" in line
    assert "--strict" in line


@pytest.mark.parametrize(
    ("args", "env"),
    [(("--strict",), {}), ((), {"INVOCATION_ID": "0123456789abcdef0123456789abcdef"})],
    ids=["strict", "run-by-systemd"],
)
async def test_check_config_strict_or_in_the_service_refuses_unset_secrets(
    site: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    code, out, err = await cli("check-config", *args, str(site), env=env)
    assert code == 2, out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 4, err
    assert all("is not set" in e and "/etc/meter-gateway/credentials/" in e for e in errors)


async def test_read_scan_deadletters_and_pts_status_need_no_secret(site: Path) -> None:
    code, out, err = await cli("read", "incomer", "-c", str(site))
    assert code == 0, err
    assert "voltage_l1" in out
    code, out, err = await cli("scan", "plant", "-c", str(site), "--units", "1-2")
    assert code == 0, err
    assert "sdm630" in out
    code, out, err = await cli("deadletters", "-c", str(site))
    assert code == 0, err
    code, out, err = await cli("pts", "status", "-c", str(site))
    assert code == 0, err
    assert "system 1000" in out
    for output in (out, err):
        assert "is not set" not in output  # no noise about secrets these do not use


async def test_pts_submit_and_run_need_their_secrets(site: Path) -> None:
    code, _, err = await cli("pts", "submit", "-c", str(site), "--system", "1000", "--test")
    assert code == 2
    assert "uplinks.pts.subscription_key: secret ${PTS_KEY} is not set" in err
    assert "WATTICS" not in err  # only what the command uses
    code, _, err = await cli("run", "-c", str(site))
    assert code == 2
    assert len([line for line in err.splitlines() if "is not set" in line]) == 4, err


async def test_secrets_from_the_shipped_credential_directory(site: Path, tmp_path: Path) -> None:
    """The unit's `LoadCredential=meter-gateway:/etc/meter-gateway/credentials` names every
    file `meter-gateway_<NAME>` in `$CREDENTIALS_DIRECTORY`; outside the service the
    directory itself is read (as root)."""
    values = {
        "WATTICS_USER": "user-1",
        "WATTICS_PASSWORD": "pw-1",
        "PTS_KEY": "key-1",
        "MQTT_PASSWORD": "mqtt-1",
    }
    loaded = tmp_path / "run-credentials"
    on_disk = tmp_path / "etc-credentials"
    loaded.mkdir()
    on_disk.mkdir()
    for name, value in values.items():
        (loaded / f"meter-gateway_{name}").write_text(value + "\n")
        (on_disk / name).write_text(value)
    config = load_config(site, {"CREDENTIALS_DIRECTORY": str(loaded)}, credentials_dir=tmp_path)
    assert config.uplinks.wattics is not None and config.uplinks.pts is not None
    assert config.uplinks.wattics.password.get_secret_value() == "pw-1"
    config = load_config(site, {}, credentials_dir=on_disk)
    assert config.uplinks.pts is not None
    assert config.uplinks.pts.subscription_key.get_secret_value() == "key-1"
    assert config.warnings == []
