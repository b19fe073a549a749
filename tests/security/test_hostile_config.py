"""Config input is trusted, but it must not hurt (issue "Survive a hostile world", item 9).

`meter-gateway check-config` is run as a real process, the way an installer (as root) runs
it, on files an attacker or an accident could put in front of it:

- alias bombs ("billion laughs": a few hundred bytes that expand to billions of nodes) and
  an anchor used inside itself, and nesting deeper than any config needs;
- `register_map:` naming a device (`/dev/zero`), a FIFO, a huge sparse file, or a file that
  is not a map at all (`/etc/shadow`, or a stand-in with known secret lines);
- `${file:...}` and `${NAME}` values that land in a key whose error would repeat them.

Each must end in exit 2 with a `file:line: key: why` error, within seconds and without a
traceback, and print no line of the file read and no secret value. The billion-laughs shape
is the classic one (also PyYAML issue #37, "Billion laughs"); the memory limit makes a loader
that expands aliases fail fast instead of taking the machine down.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.paths import REPO

#: A limit no honest check-config gets near (the interpreter with pydantic is ~150 MB).
ADDRESS_SPACE_LIMIT = 1536 * 1024 * 1024
#: Seconds a refusal may take, on a loaded CI box.
QUICK_S = 10.0

SITE = """\
gateway: {id: site-1}
buses: {plant: {type: modbus-tcp, host: 127.0.0.1}}
"""

#: Lines of a fake shadow file: distinctive so any echo of the file is found.
SHADOW_LINES = [
    "root:$6$Zq7uXw$hashOFroot-Kx93mPq:20228:0:99999:7:::",
    "daemon:*:20228:0:99999:7:::",
    "installer:$6$Lm4T$hashOFinstaller-Vb27Rt:20228:0:99999:7:::",
]


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def check_config(
    path: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=_limit_memory,
    )
    return result, time.monotonic() - started


def assert_refused(result: subprocess.CompletedProcess[str], elapsed: float, *needles: str) -> str:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert "MemoryError" not in output and "RecursionError" not in output
    assert result.returncode == 2, output[-3000:]
    assert elapsed < QUICK_S, f"check-config took {elapsed:.1f} s"
    for needle in needles:
        assert needle in output, output
    return output


def laughs(levels: int, width: int) -> str:
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels):
        refs = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"l{level}: &l{level} [{refs}]")
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(90)
def test_a_billion_laughs_is_refused_quickly_and_in_little_memory(tmp_path: Path) -> None:
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text(SITE + laughs(levels=9, width=10))  # 10**9 nodes from ~900 bytes
    assert bomb.stat().st_size < 1200
    result, elapsed = check_config(bomb)
    assert_refused(result, elapsed, "laughs.yaml:", "alias")


@pytest.mark.timeout(90)
def test_a_small_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    """The 398-byte shape that took 19 s: few levels, wide references."""
    bomb = tmp_path / "small.yaml"
    bomb.write_text(SITE + laughs(levels=6, width=13))  # 4.8 million nodes
    assert bomb.stat().st_size < 900
    result, elapsed = check_config(bomb)
    assert_refused(result, elapsed, "small.yaml:", "alias")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "text",
    [
        "gateway: &g {id: site-1, again: *g}\n",
        "gateway: {id: site-1}\nmeters: &m [*m]\n",
    ],
    ids=["mapping", "list"],
)
def test_an_anchor_used_inside_itself_is_an_error_not_a_traceback(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "recursive.yaml"
    path.write_text(text)
    result, elapsed = check_config(path)
    assert_refused(result, elapsed, "recursive.yaml:", "inside itself")


@pytest.mark.timeout(60)
def test_nesting_deeper_than_any_config_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(SITE + "meters: " + "[" * 5000 + "]" * 5000 + "\n")
    result, elapsed = check_config(path)
    assert_refused(result, elapsed, "deep.yaml:", "nested")


@pytest.mark.timeout(60)
def test_a_config_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("w") as out:
        out.write(SITE)
        out.truncate(3 * 1024 * 1024 * 1024)  # sparse: 3 GiB of NUL bytes, no disk used
    result, elapsed = check_config(path)
    assert_refused(result, elapsed, "huge.yaml", "too large")


def map_config(tmp_path: Path, register_map: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(
        SITE + f"meters:\n  - {{id: m1, bus: plant, unit: 1, register_map: {register_map!r}}}\n"
    )
    return path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_a_device_as_register_map_is_refused_unread(tmp_path: Path, device: str) -> None:
    result, elapsed = check_config(map_config(tmp_path, device))
    assert_refused(result, elapsed, "site.yaml:4: meters[0].register_map:", ".yaml or .yml")
    # ... and under a map's name, as a symlink, it is still no regular file
    link = tmp_path / "maps" / "meter.yaml"
    link.parent.mkdir()
    link.symlink_to(device)
    result, elapsed = check_config(map_config(tmp_path, "maps/meter.yaml"))
    assert_refused(result, elapsed, "site.yaml:4: meters[0].register_map:", "not a regular file")


@pytest.mark.timeout(60)
def test_a_fifo_as_register_map_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    result, elapsed = check_config(map_config(tmp_path, str(fifo)))
    assert_refused(result, elapsed, "meters[0].register_map:", "not a regular file")


@pytest.mark.timeout(60)
def test_a_huge_register_map_file_is_refused_unread(tmp_path: Path) -> None:
    huge = tmp_path / "huge-map.yaml"
    with huge.open("w") as out:
        out.truncate(2 * 1024 * 1024 * 1024)
    result, elapsed = check_config(map_config(tmp_path, str(huge)))
    assert_refused(result, elapsed, "meters[0].register_map:", "too large")


def fake_shadow(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(SHADOW_LINES) + "\n")
    return path


def assert_no_shadow_line(output: str) -> None:
    for line in SHADOW_LINES:
        for part in line.split(":"):
            if len(part) > 6:
                assert part not in output, f"{part!r} printed:\n{output}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["shadow", "shadow.yaml"])
def test_a_file_that_is_not_a_map_is_refused_without_printing_its_lines(
    tmp_path: Path, name: str
) -> None:
    shadow = fake_shadow(tmp_path, name)
    result, elapsed = check_config(map_config(tmp_path, str(shadow)))
    output = assert_refused(result, elapsed, "meters[0].register_map:")
    assert_no_shadow_line(output)


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.access("/etc/shadow", os.R_OK), reason="/etc/shadow is not readable")
def test_etc_shadow_as_register_map_prints_none_of_its_lines(tmp_path: Path) -> None:
    result, elapsed = check_config(map_config(tmp_path, "/etc/shadow"))
    output = assert_refused(result, elapsed, "meters[0].register_map:")
    for line in Path("/etc/shadow").read_text().splitlines():
        user, _, rest = line.partition(":")
        assert rest not in output and f"{user}:" not in output, output


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "key",
    ["model", "unit", "bus"],
)
def test_a_secret_file_in_a_key_whose_error_shows_its_value_is_not_echoed(
    tmp_path: Path, key: str
) -> None:
    shadow = fake_shadow(tmp_path, "secret")
    meter = {"id": "m1", "bus": "plant", "unit": "1", "model": "sdm630"}
    meter[key] = f'"${{file:{shadow}}}"'
    fields = ", ".join(f"{k}: {v}" for k, v in meter.items())
    path = tmp_path / "site.yaml"
    path.write_text(SITE + f"meters:\n  - {{{fields}}}\n")
    result, elapsed = check_config(path)
    output = assert_refused(result, elapsed, f"site.yaml:4: meters[0].{key}")
    assert_no_shadow_line(output)


@pytest.mark.timeout(60)
def test_a_secret_from_the_environment_is_not_echoed_by_a_validator(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("gateway: {id: site-1, timezone: '${SITE_TZ}'}\n")
    token = "Hx81-not-a-zone-Qp44"
    result, elapsed = check_config(path, {"SITE_TZ": token})
    output = assert_refused(result, elapsed, "site.yaml:1: gateway.timezone:")
    assert "Hx81" not in output and "Qp44" not in output, output


@pytest.mark.timeout(60)
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_device_as_secret_file_is_refused_unread(tmp_path: Path, device: str) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(f"gateway: {{id: site-1, timezone: '${{file:{device}}}'}}\n")
    result, elapsed = check_config(path)
    assert_refused(result, elapsed, "site.yaml:1: gateway.timezone:", "not a regular file")
