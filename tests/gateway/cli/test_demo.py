"""The README's first command: the demo runs end to end and prints what it forwards."""

from __future__ import annotations

import re
import subprocess
import sys

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
