"""What check-config accepts must run (issue "Survive a hostile world", item 10).

Every case the issue lists, as an installer would write it, run through `meter-gateway
check-config` as a real process: `interval: .nan` (crashed at start), `.inf` (never polled),
`1ms` (flooded the log and ignored SIGTERM), a service URL with `user:pass@` (restarted the
stream for ever). Each must be exit 2 with `file:line: key: why`. The smallest interval that is
accepted (100 ms) must then run: tests/faults/test_fast_interval.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO

SITE = """\
gateway: {{id: site-1, timezone: UTC, data_dir: "{data_dir}", clock_check: none}}
buses: {{plant: {{type: modbus-tcp, host: 127.0.0.1, port: {port}, timeout_secs: 1}}}}
meters:
  - id: m1
    bus: plant
    unit: 1
    model: sdm630
    interval_secs: {interval}
"""
WATTICS = """\
uplinks:
  wattics:
    url: "{url}"
    username: u
    password: p-secret-value
    meters: {{m1: {{id: s-m1}}}}
"""
URL = "https://web-sensor.wattics.com/v2/"


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("interval", "url", "line", "key"),
    [
        (".nan", URL, 8, "meters[0].interval_secs"),
        (".inf", URL, 8, "meters[0].interval_secs"),
        ("-.inf", URL, 8, "meters[0].interval_secs"),
        ("1ms", URL, 8, "meters[0].interval_secs"),
        ("0.05", URL, 8, "meters[0].interval_secs"),
        ("1e400", URL, 8, "meters[0].interval_secs"),
        ("60", "https://user:pass@web-sensor.wattics.com/v2/", 11, "uplinks.wattics.url"),
        ("60", "https://user@web-sensor.wattics.com/v2/", 11, "uplinks.wattics.url"),
    ],
)
def test_check_config_refuses_what_would_break_at_run_time(
    tmp_path: Path, interval: str, url: str, line: int, key: str
) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(
        (SITE + WATTICS).format(data_dir=tmp_path, port=502, interval=interval, url=url)
    )
    result = check_config(path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"{path}:{line}: {key}: " in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "pass@" not in result.stderr


def test_the_smallest_interval_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    text = SITE + WATTICS
    path.write_text(text.format(data_dir=tmp_path, port=502, interval="100ms", url=URL))
    result = check_config(path)
    assert result.returncode == 0, result.stderr
