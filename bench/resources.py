"""The daemon's resource budget, measured on the real process (`python -m gateway run`).

Three runs, each a daemon subprocess measured through /proc (bench.procstat) while this process
plays the site around it:

- **site**: N simulated SDM630s, each its own Modbus TCP endpoint (pymodbus servers), polled
  every `interval`, and three uplinks (Wattics, EnerKey, PTS) sending to the strict fakes of
  tests/fakes. CPU % of one core and RSS are measured after a warm-up (imports and the first
  reads are not what a site pays for day after day). The same run at 20 meters / 10 s gives
  the bytes written to storage per day (/proc/<pid>/io write_bytes over the run,
  extrapolated): what wears an SD card.
- **backlog**: a store holding 1 M undelivered samples (10 meters x 100 000, a day of 1 s
  data), drained by the daemon to a fake Wattics in a child process. RSS is sampled every
  second: it must stay flat, i.e. the uplink reads the backlog in batches and never holds it.
  The drain rate is the real process's, fsyncs and all.

Targets (issue 10): RSS <= 60 MB and flat with a backlog; CPU for 50 meters at 1 s <= 15 % of
one core. Durations: MG_BENCH_SECONDS (default 300, the issue's 5 minutes) or `--seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench import procstat
from bench.wattics_drain import PASSWORD as DRAIN_PASSWORD
from bench.wattics_drain import SDM630_LIKE, _fake_process
from bench.wattics_drain import USERNAME as DRAIN_USERNAME
from core.sample import Sample
from drivers.modbus.register_map import load_builtin
from drivers.simulator import SimulatedMeter, SimulatorServer
from gateway.store.database import Store

ROOT: Final = Path(__file__).resolve().parents[1]
MB: Final = 1024 * 1024
DEFAULT_SECONDS: Final = 300.0
#: Not measured: imports, store open, first connections.
WARMUP_SECONDS: Final = 15.0
START_TIMEOUT_S: Final = 30.0
WATTICS_USER, WATTICS_PASSWORD = "bench", "bench-wattics-password"
ENERKEY_KEYS: Final = {"A": "bench-enerkey-key-A", "B": "bench-enerkey-key-B"}
PTS_KEY: Final = "bench-pts-key"


def run_seconds() -> float:
    """How long each measured run lasts: MG_BENCH_SECONDS, else the issue's 5 minutes."""
    return float(os.environ.get("MG_BENCH_SECONDS", DEFAULT_SECONDS))


@dataclass
class RunFigures:
    seconds: float
    cpu_pct: float
    rss_max_mb: float
    rss_end_mb: float
    rss_after_warmup_mb: float
    write_bytes_per_day: float
    #: Uplink deliveries counted during the measured window.
    delivered: int
    extra: dict[str, float] = field(default_factory=dict)


# -- the daemon process -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def daemon_process(
    config_text: str, env: dict[str, str], workdir: Path
) -> AsyncIterator[int]:
    """Run the daemon on `config_text` until the block ends (SIGTERM); yields its pid."""
    config = workdir / "site.yaml"
    config.write_text(config_text)
    log_path = workdir / "daemon.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "gateway", "run", "-c", str(config)),
            cwd=ROOT,
            env={**os.environ, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while " running: " not in log_path.read_text(errors="replace"):
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not start:\n{log_path.read_text()[-2000:]}")
            await asyncio.sleep(0.05)
        yield process.pid
        if process.returncode is not None:
            raise RuntimeError(f"daemon died during the run:\n{log_path.read_text()[-2000:]}")
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


async def _watch(pid: int, seconds: float) -> tuple[procstat.ProcSnapshot, float, list[int]]:
    """RSS every second for `seconds`; (snapshot at the end, elapsed, RSS samples)."""
    rss: list[int] = []
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        rss.append(procstat.rss_bytes(pid))
        await asyncio.sleep(min(1.0, max(0.0, seconds - (time.monotonic() - began))))
    end = procstat.snapshot(pid)
    rss.append(end.rss_bytes)
    return end, time.monotonic() - began, rss


# -- the site around it -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def simulated_meters(count: int) -> AsyncIterator[list[int]]:
    """`count` SDM630s, each its own Modbus TCP endpoint, values moving like a building's."""
    meters = [SimulatedMeter(load_builtin("sdm630"), unit_id=1) for _ in range(count)]
    servers = [SimulatorServer([meter]) for meter in meters]

    async def move() -> None:
        while True:
            now = time.time()
            for meter in meters:
                meter.tick(now)
            await asyncio.sleep(5)

    for server in servers:
        await server.start()
    mover = asyncio.get_running_loop().create_task(move(), name="bench-meter-values")
    try:
        yield [server.port for server in servers]
    finally:
        mover.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await mover
        for server in servers:
            await server.stop()


def site_config(data_dir: Path, ports: list[int], interval: str, urls: dict[str, str]) -> str:
    """A site config: one bus and meter per port, every meter to every uplink in `urls`."""
    lines = [
        # clock_check none: a bench box's clock may not be NTP-synced (samples would be held)
        "gateway: {id: bench, timezone: Europe/Dublin, clock_check: none,"
        f' data_dir: "{data_dir}"}}',
        "buses:",
        *(
            f"  b{i}: {{type: modbus-tcp, host: 127.0.0.1, port: {port}, timeout_secs: 0.8}}"
            for i, port in enumerate(ports)
        ),
        "meters:",
        *(
            f"  - {{id: m{i}, bus: b{i}, unit: 1, model: sdm630, interval_secs: {interval}}}"
            for i in range(len(ports))
        ),
        "uplinks:",
    ]
    if "wattics" in urls:
        lines += [
            "  wattics:",
            f'    url: "{urls["wattics"]}"',
            f"    username: {WATTICS_USER}",
            "    password: ${BENCH_WATTICS_PASSWORD}",
            "    meters:",
            *(f"      m{i}: {{id: stream-{i}}}" for i in range(len(ports))),
        ]
    if "enerkey" in urls:
        lines += [
            "  enerkey:",
            f'    base_url: "{urls["enerkey"]}"',
            '    api_keys: ["${BENCH_ENERKEY_A}", "${BENCH_ENERKEY_B}"]',
            "    meters:",
            *(f"      m{i}: {{meter_id: {1000 + i}, unit: kWh}}" for i in range(len(ports))),
        ]
    if "pts" in urls:
        lines += [
            "  pts:",
            "    subscription_key: ${BENCH_PTS_KEY}",
            f'    base_url: "{urls["pts"]}"',
            "    path_prefix: /ptsstaging",
            "    systems: {m0: {fk_system: 1000}, m1: {fk_system: 2000}}",
        ]
    return "\n".join(lines) + "\n"


SECRETS_ENV: Final = {
    "BENCH_WATTICS_PASSWORD": WATTICS_PASSWORD,
    "BENCH_ENERKEY_A": ENERKEY_KEYS["A"],
    "BENCH_ENERKEY_B": ENERKEY_KEYS["B"],
    "BENCH_PTS_KEY": PTS_KEY,
}


async def measure_site(meters: int, interval: str, seconds: float) -> RunFigures:
    """CPU, RSS and storage writes of the daemon polling `meters` with all three uplinks."""
    sys.path.insert(0, str(ROOT))  # the fakes live with the tests
    from tests.fakes.enerkey import FakeEnerKey
    from tests.fakes.pts import FakePts, FakeSystem
    from tests.fakes.wattics import FakeWattics

    systems = {fk: FakeSystem(fk, capacity_kw=10.0) for fk in (1000, 2000)}
    with tempfile.TemporaryDirectory(prefix="mg-bench-") as directory:
        workdir = Path(directory)
        async with (
            simulated_meters(meters) as ports,
            FakeWattics(WATTICS_USER, WATTICS_PASSWORD) as wattics,
            FakeEnerKey(ENERKEY_KEYS, {1000 + i for i in range(meters)}) as enerkey,
            FakePts(PTS_KEY, systems) as pts,
        ):
            urls = {"wattics": wattics.url, "enerkey": enerkey.url, "pts": pts.base_url}
            config = site_config(workdir / "data", ports, interval, urls)
            async with daemon_process(config, SECRETS_ENV, workdir) as pid:
                await asyncio.sleep(WARMUP_SECONDS)
                start = procstat.snapshot(pid)
                delivered_before = wattics.total_accepted()
                end, elapsed, rss = await _watch(pid, seconds)
                delivered = wattics.total_accepted() - delivered_before
            if wattics.rejected or enerkey_rejections(enerkey):
                raise RuntimeError("a fake refused what the daemon sent: see the fakes' logs")
    expected = meters * elapsed / float(interval.removesuffix("s"))
    if delivered < 0.8 * expected:  # held samples or a broken site: the figures would lie
        raise RuntimeError(f"only {delivered} of ~{expected:.0f} samples reached Wattics")
    return RunFigures(
        seconds=elapsed,
        cpu_pct=100 * (end.cpu_s - start.cpu_s) / elapsed,
        rss_max_mb=max(rss) / MB,
        rss_end_mb=end.rss_bytes / MB,
        rss_after_warmup_mb=start.rss_bytes / MB,
        write_bytes_per_day=(end.write_bytes - start.write_bytes) / elapsed * 86_400,
        delivered=delivered,
    )


def enerkey_rejections(fake: object) -> int:
    return len(getattr(fake, "rejected", []))


# -- a 1 M-sample backlog -----------------------------------------------------------------------


def build_backlog(db: Path, rows: int, meters: int) -> None:
    """`rows` samples, 1 s apart per meter, ending a minute ago: a long outage's catch-up."""
    per_meter = rows // meters
    start_ms = (int(time.time()) - per_meter - 60) * 1000
    with Store(db) as store:
        batch: list[Sample] = []
        for i in range(per_meter):
            for m in range(meters):
                batch.append(Sample(f"m{m}", start_ms + i * 1000, SDM630_LIKE))
            if len(batch) >= 20_000:
                store.append(batch)
                batch = []
        if batch:
            store.append(batch)


def delivered_rows(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        (count,) = connection.execute(
            "SELECT COALESCE(SUM((SELECT COUNT(*) FROM samples s "
            "WHERE s.meter = c.meter AND s.id <= c.position)), 0) "
            "FROM cursors c WHERE c.uplink = 'wattics'"
        ).fetchone()
    connection.close()
    return int(count)


async def measure_backlog(rows: int, seconds: float, meters: int = 10) -> RunFigures:
    """RSS of the daemon while it drains a `rows`-sample backlog to Wattics; its drain rate."""
    with tempfile.TemporaryDirectory(prefix="mg-bench-") as directory:
        workdir = Path(directory)
        data_dir = workdir / "data"
        data_dir.mkdir()
        db = data_dir / "gateway.sqlite3"
        built = time.monotonic()
        build_backlog(db, rows, meters)
        build_s = time.monotonic() - built
        async with simulated_meters(meters) as ports, _fake_process() as url:
            config = site_config(data_dir, ports, "1s", {"wattics": url})
            config = config.replace(f"username: {WATTICS_USER}", f"username: {DRAIN_USERNAME}")
            env = {"BENCH_WATTICS_PASSWORD": DRAIN_PASSWORD}
            async with daemon_process(config, env, workdir) as pid:
                await asyncio.sleep(min(WARMUP_SECONDS, seconds / 4))
                start = procstat.snapshot(pid)
                delivered_before = delivered_rows(db)
                end, elapsed, rss = await _watch(pid, seconds)
                delivered = delivered_rows(db) - delivered_before
    return RunFigures(
        seconds=elapsed,
        cpu_pct=100 * (end.cpu_s - start.cpu_s) / elapsed,
        rss_max_mb=max(rss) / MB,
        rss_end_mb=end.rss_bytes / MB,
        rss_after_warmup_mb=start.rss_bytes / MB,
        write_bytes_per_day=(end.write_bytes - start.write_bytes) / elapsed * 86_400,
        delivered=delivered,
        extra={"build_s": build_s, "drain_per_s": delivered / elapsed, "rows": float(rows)},
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.resources [--seconds S] [--rows N]`: print the figures of each run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=run_seconds())
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--only", choices=["site", "disk", "backlog"], default=None)
    args = parser.parse_args(argv)
    runs = {
        "site": lambda: measure_site(50, "1s", args.seconds),
        "disk": lambda: measure_site(20, "10s", args.seconds),
        "backlog": lambda: measure_backlog(args.rows, args.seconds),
    }
    for name, run in runs.items():
        if args.only in (None, name):
            print(name, asyncio.run(run()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
