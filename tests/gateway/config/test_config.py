"""Config errors say file, line and key; secrets come from env or credential files, never echoed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.config_errors import ConfigError
from gateway.config.loader import load_config
from tests.paths import REPO

VALID = """\
gateway:
  id: site-42
  timezone: Europe/Dublin
  data_dir: /tmp/mg
buses:
  plant: {type: modbus-tcp, host: 127.0.0.1, port: 5020}
meters:
  - {id: incomer, bus: plant, unit: 1, model: sdm630, interval_secs: 60s}
  - {id: pv, bus: plant, unit: 3, model: sdm630, interval_secs: 15s}
uplinks:
  wattics:
    username: ${WATTICS_USER}
    password: ${WATTICS_PASSWORD}
    meters: {incomer: {id: abc123}}
"""

SECRETS = {"WATTICS_USER": "user-1", "WATTICS_PASSWORD": "s3cr3t-Pa55"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def problems(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, SECRETS if environ is None else environ)
    return [str(p) for p in info.value.problems]


def test_valid_config_loads_with_durations_and_secrets(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID), SECRETS)
    assert [m.interval_secs for m in config.meters] == [60.0, 15.0]
    assert config.uplinks.wattics is not None
    assert config.uplinks.wattics.password.get_secret_value() == "s3cr3t-Pa55"
    assert "s3cr3t" not in repr(config)


def test_example_config_is_valid(tmp_path: Path) -> None:
    config = load_config(
        REPO / "config.example.yaml", {"WATTICS_USER": "u", "WATTICS_PASSWORD": "p"}
    )
    assert config.gateway.id == "site-42"


def test_misspelt_key_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("interval_secs: 15s", "intervall_secs: 15s"))
    assert problems(path) == [
        f"{path}:9: meters[1].intervall_secs: unknown key (check its "
        "spelling and docs/configuration.md)"
    ]


def test_bad_value_points_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("interval_secs: 15s", "interval_secs: soon"))
    (message,) = problems(path)
    assert message.startswith(f"{path}:9: meters[1].interval_secs: ")
    assert "duration" in message


def test_unknown_bus_type_and_missing_key(tmp_path: Path) -> None:
    text = VALID.replace("{type: modbus-tcp, host: 127.0.0.1, port: 5020}", "{type: modbus-udp}")
    (message,) = problems(write(tmp_path, text))
    assert ":6: buses.plant: unknown type" in message
    text = VALID.replace("  id: site-42\n", "")
    (message,) = problems(write(tmp_path, text))
    assert ":1: gateway: required key 'id' is missing" in message


def test_references_between_sections_are_checked(tmp_path: Path) -> None:
    text = VALID.replace("bus: plant, unit: 3", "bus: rs485, unit: 3").replace(
        "{incomer: {id: abc123}}", "{incomer: {id: abc123}, boiler: {id: x}}"
    )
    found = problems(write(tmp_path, text))
    assert any(":9: meters[1].bus: no bus named 'rs485'" in p for p in found)
    assert any(":14: uplinks.wattics.meters.boiler: no meter with id 'boiler'" in p for p in found)


def test_unknown_model_lists_the_built_in_ones(tmp_path: Path) -> None:
    (message,) = problems(
        write(
            tmp_path,
            VALID.replace("model: sdm630, interval_secs: 15s", "model: sdm999, interval_secs: 15s"),
        )
    )
    assert ":9: meters[1].model: unknown model 'sdm999'" in message
    assert "sdm630" in message


def test_missing_secret_names_variable_and_never_a_value(tmp_path: Path) -> None:
    (message,) = problems(write(tmp_path, VALID), {"WATTICS_USER": "user-1"})
    assert ":13: uplinks.wattics.password: secret ${WATTICS_PASSWORD} is not set" in message


def test_secret_from_systemd_credentials_directory(tmp_path: Path) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "WATTICS_PASSWORD").write_text("from-credential\n")
    config = load_config(
        write(tmp_path, VALID),
        {"WATTICS_USER": "u", "CREDENTIALS_DIRECTORY": str(credentials)},
    )
    assert config.uplinks.wattics is not None
    assert config.uplinks.wattics.password.get_secret_value() == "from-credential"


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    (message,) = problems(
        write(tmp_path, VALID.replace("  timezone: Europe/Dublin", "  timezone: ["))
    )
    assert message.startswith(f"{tmp_path / 'site.yaml'}:") and "not valid YAML" in message


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    found = problems(
        write(
            tmp_path,
            VALID.replace(
                "  timezone: Europe/Dublin\n", "  timezone: Europe/Dublin\n  timezone: UTC\n"
            ),
        )
    )
    assert any(":4: gateway.timezone: duplicate key" in p for p in found)


def test_unknown_time_zone(tmp_path: Path) -> None:
    (message,) = problems(write(tmp_path, VALID.replace("Europe/Dublin", "Europe/Atlantis")))
    assert ":3: gateway.timezone: unknown time zone 'Europe/Atlantis'" in message


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=REPO,
        timeout=30,
        check=False,
    )


def test_check_config_exit_codes_and_no_secret_in_output(tmp_path: Path) -> None:
    good = write(tmp_path, VALID)
    result = run_cli("check-config", str(good), env=SECRETS)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "s3cr3t" not in result.stdout + result.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace("unit: 3", "unit: 300"))
    result = run_cli("check-config", str(bad), env=SECRETS)
    assert result.returncode == 2
    assert f"{bad}:9: meters[1].unit:" in result.stderr
    assert "s3cr3t" not in result.stdout + result.stderr


def test_old_key_names_still_work_and_check_config_says_what_they_are_now(tmp_path: Path) -> None:
    old = VALID.replace("interval_secs: 15s", "interval: 15s").replace(
        "port: 5020}",
        "port: 5020}\n  line: {type: modbus-rtu, port: /dev/ttyUSB0, "
        "inter_frame_gap_ms: 5}\n  optical: {type: iec62056-21, port: /dev/ttyUSB1, "
        "switch_delay_ms: 300}",
    )
    path = write(tmp_path, old)
    config = load_config(path, SECRETS)
    assert [m.interval_secs for m in config.meters] == [60.0, 15.0]
    line = config.buses["line"]
    assert line.type == "modbus-rtu" and line.inter_frame_gap_secs == 0.005  # ms, converted
    warnings = [str(w) for w in config.warnings]
    assert any(w.startswith(f"{path}:11: meters[1].interval: 'interval': renamed 'interval_secs'")
               for w in warnings), warnings  # fmt: skip
    assert any("inter_frame_gap_ms" in w and "inter_frame_gap_secs" in w for w in warnings)
    assert any("switch_delay_ms" in w and "no longer used" in w for w in warnings)
    result = run_cli("check-config", str(path), env=SECRETS)
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "'interval_secs'" in result.stderr
    assert load_config(write(tmp_path, VALID), SECRETS).warnings == []
