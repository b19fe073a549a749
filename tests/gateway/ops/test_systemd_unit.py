"""The shipped systemd unit: the keys the daemon relies on, and systemd's own view of it."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.cli.main import EXIT_CONFIG
from gateway.config.schema import GatewayConfig
from gateway.config.secrets import CREDENTIAL_ID, CREDENTIALS_DIR
from gateway.store.recovery import EXIT_STORE
from tests.helpers.systemd_unit import UNIT, parse_unit, systemd_analyze
from tests.paths import REPO


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key)
    assert values is not None, f"{key}= missing"
    assert len(values) <= 1, f"{key}= set more than once: {values}"
    return values[0] if values else ""


def test_parser_handles_repeats_resets_and_continuations() -> None:
    parsed = parse_unit("[Service]\nA=1\nA=2\nB=x\nB=\n# C=3\nD=one \\\n  two\n")
    assert parsed == {"Service": {"A": ["1", "2"], "B": [], "D": ["one two"]}}


def test_notify_watchdog_and_restart(service: dict[str, list[str]]) -> None:
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert one(service, "WatchdogSec") == "60"
    assert one(service, "Restart") == "on-failure"
    assert one(service, "RestartSec") == "5"
    assert one(service, "TimeoutStopSec") == "20"
    assert one(service, "ExecStart") == (
        "/opt/meter-gateway/venv/bin/meter-gateway run -c /etc/meter-gateway/config.yaml"
    )


def test_runs_as_its_own_user_with_the_default_data_dir(service: dict[str, list[str]]) -> None:
    assert one(service, "User") == "meter-gateway"
    assert one(service, "DynamicUser") == "no"
    assert "dialout" in one(service, "SupplementaryGroups").split()
    state_dir = one(service, "StateDirectory")
    assert GatewayConfig.model_fields["data_dir"].default == Path("/var/lib") / state_dir
    assert one(service, "UMask") == "0077"


def test_serial_ports_stay_reachable_under_a_closed_device_policy(
    service: dict[str, list[str]],
) -> None:
    assert one(service, "PrivateDevices") == "no"
    assert one(service, "DevicePolicy") == "closed"
    allowed = set(service["DeviceAllow"])
    assert {"char-ttyUSB rw", "char-ttyACM rw", "char-ttyAMA rw", "char-ttyS rw"} <= allowed


def test_sandbox(service: dict[str, list[str]]) -> None:
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        # off: it would block the kernel clock check's read (tests/gateway/clock/
        # test_clock_check_sandboxed.py proves the check works and writes stay refused)
        "ProtectClock": "no",
        "PrivateMounts": "yes",
        "ProtectHostname": "yes",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "CapabilityBoundingSet": "",
    }
    assert {key: one(service, key) for key in expected} == expected
    assert service["SystemCallFilter"][0] == "@system-service"


def test_the_unit_loads_the_one_credential_directory_the_loader_reads(
    service: dict[str, list[str]],
) -> None:
    """One credential location: every file of /etc/meter-gateway/credentials reaches the
    service as $CREDENTIALS_DIRECTORY/meter-gateway_<NAME>, which is where the loader looks."""
    assert service["LoadCredential"] == [f"{CREDENTIAL_ID}:{CREDENTIALS_DIR}"]
    text = UNIT.read_text()
    assert str(CREDENTIALS_DIR) in text and "LoadCredential=NAME" not in text


def test_a_config_error_stops_the_service_instead_of_restarting_it(
    service: dict[str, list[str]], tmp_path: Path
) -> None:
    """The unedited example (secrets unset) made the unit restart every 5 s for ever. `run`
    with a config error exits EXIT_CONFIG with the errors on stderr (the journal, `systemctl
    status`), and the unit does not restart on that status."""
    prevented = {
        status for value in service["RestartPreventExitStatus"] for status in value.split()
    }
    assert str(EXIT_CONFIG) in prevented
    assert str(EXIT_STORE) in prevented  # a healthy store out of reach: stop, look (issue 16)
    assert one(service, "Restart") == "on-failure"  # other failures are still restarted
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "-c", str(REPO / "config.example.yaml")],
        env={"PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "config.example.yaml:" in result.stderr and "is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_systemd_accepts_every_key() -> None:
    result = subprocess.run(
        [systemd_analyze(), "verify", str(UNIT)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if re.search(r"unknown|failed to parse|invalid|ignoring", line, re.IGNORECASE)
    ]
    assert complaints == []


def test_security_exposure_is_at_most_2_5(record_property: Callable[[str, object], None]) -> None:
    """`systemd-analyze security` scores the sandbox (0 = tight, 10 = none); our budget is 2.5,
    while the serial-port and network tests above show the service can still do its job."""
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(UNIT)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    record_property("systemd_exposure", exposure)
    print(f"systemd-analyze security exposure: {exposure}")
    assert 0.0 <= exposure <= 2.5
