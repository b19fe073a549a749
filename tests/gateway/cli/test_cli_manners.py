"""The command line's small manners (issue "From install to first forwarded kWh", item 7),
each as an installer meets it, in a real process:

- `registers sdm630 | head` (and any output cut short by a pager or `head`) ends quietly,
  without a BrokenPipeError traceback;
- every `-c CONFIG` option says what it is and shows its default;
- `deadletters --uplink nosuch` is a usage error naming the uplinks, not "no parked items";
- `pts submit --system N` for a system the config does not have is a usage error naming the
  configured ones, never `system None`;
- `./dev.sh` without a command prints its help block, and no line of the script itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.cli.main import DEFAULT_CONFIG, EXIT_CONFIG
from tests.paths import REPO

#: The exit status of a command whose reader went away (128 + SIGPIPE), as a C tool gives.
EXIT_BROKEN_PIPE = 141


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def site(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    document = {
        "gateway": {"id": "site-7", "data_dir": str(tmp_path)},
        "buses": {"plant": {"type": "modbus-tcp", "host": "127.0.0.1"}},
        "meters": [{"id": "pv", "bus": "plant", "model": "sdm630"}],
        "uplinks": {
            "pts": {
                "subscription_key": "a-key",
                "systems": {"pv": {"fk_system": 1000, "capacity_kw": 10.0}},
            }
        },
    }
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize(
    "args",
    [("registers", "sdm630"), ("registers", "em24"), ("--help",)],
    ids=["registers-sdm630", "registers-em24", "help"],
)
def test_output_cut_short_by_its_reader_ends_without_a_traceback(args: tuple[str, ...]) -> None:
    """The reader (`head`) is gone before the command writes: every write meets EPIPE."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.close()
    _, err = process.communicate(timeout=60)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert process.returncode in (0, EXIT_BROKEN_PIPE)


def test_pts_status_into_a_closed_pipe_ends_without_a_traceback(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "pts", "status", "-c", str(site(tmp_path))],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.close()
    _, err = process.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert process.returncode == EXIT_BROKEN_PIPE


@pytest.mark.parametrize(
    "command",
    [
        ("run",),
        ("deadletters",),
        ("read", "m"),
        ("scan", "b"),
        ("pts", "status"),
        ("pts", "submit"),
        ("pts", "quota"),
    ],
    ids=" ".join,
)
def test_every_config_option_says_what_it_is_and_its_default(command: tuple[str, ...]) -> None:
    result = cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "-c CONFIG, --config CONFIG" in text
    assert f"(default: {DEFAULT_CONFIG})" in text


def test_check_config_help_shows_where_the_config_is_by_default() -> None:
    text = " ".join(cli("check-config", "--help").stdout.split())
    assert f"(default: {DEFAULT_CONFIG})" in text


def test_deadletters_for_an_uplink_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("deadletters", "-c", str(site(tmp_path)), "--uplink", "nosuch")
    assert result.returncode == EXIT_CONFIG
    assert "no parked items" not in result.stdout
    assert "nosuch" in result.stderr and "enerkey, pts, wattics" in result.stderr
    known = cli("deadletters", "-c", str(site(tmp_path)), "--uplink", "wattics")
    assert known.returncode == 0 and "no parked items" in known.stdout  # known, not configured


def test_pts_submit_for_an_unknown_system_names_the_configured_ones(tmp_path: Path) -> None:
    result = cli("pts", "submit", "-c", str(site(tmp_path)), "--system", "999", "--test")
    assert result.returncode == EXIT_CONFIG
    assert "None" not in result.stdout + result.stderr
    assert "999" in result.stderr and "1000" in result.stderr
    quota = ("--valid", "2", "--failed", "2", "--reason", "ticket 1")
    result = cli("pts", "quota", "-c", str(site(tmp_path)), "--system", "999", *quota)
    assert result.returncode == EXIT_CONFIG
    assert "999" in result.stderr and "1000" in result.stderr


def test_dev_sh_without_a_command_prints_only_its_help() -> None:
    result = subprocess.run(
        [str(REPO / "dev.sh")], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 64
    lines = result.stdout.splitlines()
    assert lines[0].startswith("meter-gateway from a source checkout")
    assert any(line.strip().startswith("./dev.sh deb") for line in lines)
    assert not any(line.startswith(("set ", "#", "cd ")) for line in lines), lines
