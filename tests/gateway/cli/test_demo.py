"""The README's first command: the demo runs end to end and prints what it forwards."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_demo_forwards_packets_from_both_meters_and_exits_cleanly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--seconds", "4.5", "--interval", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    forwarded = [line for line in result.stdout.splitlines() if line.startswith("-> wattics")]
    assert any("demo-incomer" in line for line in forwarded)
    assert any("demo-pv" in line for line in forwarded)
    assert len(forwarded) >= 4
    assert all(re.search(r"\d\d:\d\d:\d\d\.000[+-]\d\d:\d\d", line) for line in forwarded)
    assert "discarded by Wattics: 0, rejected: 0" in result.stdout


async def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
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


async def _until(process: asyncio.subprocess.Process, marker: str, seen: list[str]) -> None:
    assert process.stdout is not None
    async with asyncio.timeout(40):
        while not any(marker in line for line in seen):
            line = (await process.stdout.readline()).decode()
            assert line, "".join(seen)
            seen.append(line)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_demo_keep_leaves_a_ready_config_and_the_simulator_for_commissioning(
    tmp_path: Path,
) -> None:
    """`demo --keep DIR`: after the gateway part, the simulator keeps answering `read` and
    `scan` (only its two units), `check-config --strict` passes with the kept credentials,
    and SIGTERM ends it like Ctrl-C, with its summary."""
    kept = tmp_path / "demo"
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "gateway", "demo", "--keep", str(kept)],
        *["--seconds", "2.5", "--interval", "1"],
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    seen: list[str] = []
    try:
        await _until(process, "simulator still running", seen)
        config = str(kept / "config.yaml")
        code, out, err = await _run("read", "incomer", "-c", config)
        assert code == 0, err
        assert "voltage_l1" in out
        code, out, err = await _run("scan", "plant", "-c", config, "--units", "1-5")
        assert code == 0, err
        units = [line.split()[0] for line in out.splitlines() if line.split()[:1] != ["unit"]]
        assert [u for u in units if u.isdigit()] == ["1", "2"], out
        assert "answered: 2 of 5" in out
        credentials = {"CREDENTIALS_DIRECTORY": str(kept / "credentials")}
        code, _, err = await _run("check-config", "--strict", config, env=credentials)
        assert code == 0, err
        printed = "".join(seen)
        assert f"meter-gateway read incomer -c {config}" in printed
        assert f"meter-gateway scan plant -c {config}" in printed
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    rest, err = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0, err.decode()
    assert "demo: forwarded" in rest.decode() + "".join(seen)
    assert (kept / "config.yaml").exists() and (kept / "data" / "gateway.sqlite3").exists()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_sigterm_stops_the_demo_like_ctrl_c_with_its_summary() -> None:
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "gateway", "demo", "--interval", "1"],
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    seen: list[str] = []
    try:
        await _until(process, "-> wattics", seen)
    finally:
        process.send_signal(signal.SIGTERM)
    rest, err = await asyncio.wait_for(process.communicate(), timeout=20)
    output = "".join(seen) + rest.decode()
    assert process.returncode == 0, err.decode()
    assert "demo: forwarded" in output and "rejected: 0" in output
    assert "Traceback" not in err.decode()
