"""Real sites: many meters behind one Modbus TCP endpoint (a serial-to-Ethernet gateway), the
daemon as a real process with the store, one Wattics datapoint per meter and MQTT values on.

Each run (`measure_shared_site`) starts `endpoints` pymodbus simulator servers holding the
simulated SDM630s (unit ids 1..N on each), a fake Wattics in a child process, a Mosquitto
broker, and the daemon (`python -m gateway run`), then measures after a warm-up:

- CPU % of one core and RSS of the daemon (/proc, bench.procstat);
- polls per meter per second and missed boundaries, from the store: the samples each meter
  got in the window against the boundaries in it;
- read lateness: when each meter's first request of a poll reaches the simulator, minus the
  boundary it belongs to (p50/p99/max). That is when the read started on the wire, whatever
  the daemon believes;
- a bare pymodbus loop (`python -m bench.site_scale bare ...`, a child process) making the same
  3 requests per meter per interval to the same simulators in the same run, one client per
  endpoint: the least CPU the chosen library allows. Ratio = our CPU per meter-poll / its.

Durations: MG_BENCH_SECONDS (bench.resources.run_seconds) for each measured window.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench import procstat
from bench.resources import MB, daemon_process
from bench.wattics_drain import PASSWORD as FAKE_PASSWORD
from bench.wattics_drain import USERNAME as FAKE_USERNAME
from bench.wattics_drain import _fake_process
from drivers.modbus.planner import plan_map
from drivers.modbus.register_map import load_builtin
from drivers.simulator import SimulatedMeter, SimulatorServer

ROOT: Final = Path(__file__).resolve().parents[1]


@dataclass
class SiteFigures:
    meters: int
    endpoints: int
    seconds: float
    cpu_pct: float
    rss_max_mb: float
    polls_per_meter_s: float
    missed_boundaries: int
    lateness_ms: dict[str, float] = field(default_factory=dict)
    write_bytes_per_day: float = 0.0
    bytes_per_sample: float = 0.0
    bare_cpu_pct: float | None = None
    #: Polls per meter per second the bare loop achieved (seen at the simulator).
    bare_polls_per_meter_s: float | None = None
    #: WARNING and ERROR lines the daemon logged over the whole run (start-up included).
    warnings: int = 0
    log_tail: list[str] = field(default_factory=list)

    @property
    def cpu_ratio(self) -> float | None:
        """Our CPU per meter-poll / the bare pymodbus loop's (same requests, same run)."""
        if not self.bare_cpu_pct or not self.bare_polls_per_meter_s:
            return None
        ours = self.cpu_pct / max(self.polls_per_meter_s, 1e-9)
        return ours / (self.bare_cpu_pct / self.bare_polls_per_meter_s)


class _FirstRequests:
    """Arrival times (wall clock) of each meter's first request of a poll, at the simulator."""

    def __init__(self, first_address: int) -> None:
        self.first_address = first_address
        self.times: list[float] = []
        self.recording = False

    def watch(self, meter: SimulatedMeter) -> None:
        action = meter._action

        async def recorded(*args: Any) -> Any:
            if self.recording and args[2] == self.first_address:
                self.times.append(time.time())
            return await action(*args)

        meter._action = recorded  # type: ignore[method-assign]

    def lateness_ms(self, interval_s: float) -> dict[str, float]:
        late = sorted(1000 * (t - math.floor(t / interval_s) * interval_s) for t in self.times)
        if not late:
            return {}

        def pct(p: float) -> float:
            return late[min(len(late) - 1, int(p * len(late)))]

        return {"p50": pct(0.5), "p99": pct(0.99), "max": late[-1]}


@contextlib.asynccontextmanager
async def shared_endpoints(
    meters: int, endpoints: int, first_address: int
) -> AsyncIterator[tuple[list[int], _FirstRequests]]:
    """`meters` SDM630s spread over `endpoints` Modbus TCP servers (unit ids 1.. on each)."""
    sdm630 = load_builtin("sdm630")
    watch = _FirstRequests(first_address)
    groups: list[list[SimulatedMeter]] = [[] for _ in range(endpoints)]
    for i in range(meters):
        meter = SimulatedMeter(sdm630, unit_id=i // endpoints + 1)
        meter.tick(time.time())
        watch.watch(meter)
        groups[i % endpoints].append(meter)
    servers = [SimulatorServer(group) for group in groups]
    for server in servers:
        await server.start()
    try:
        yield [server.port for server in servers], watch
    finally:
        for server in servers:
            await server.stop()


def shared_config(
    data_dir: Path,
    ports: list[int],
    meters: int,
    interval_s: float,
    *,
    wattics_url: str,
    mqtt_port: int,
    status_page: bool,
) -> str:
    endpoints = len(ports)
    http = '{listen: "127.0.0.1:0"}' if status_page else "{enabled: false}"
    lines = [
        "gateway: {id: bench, timezone: Europe/Dublin, clock_check: none,"
        f' data_dir: "{data_dir}"}}',
        f"http: {http}",
        f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}, publish_values: true}}",
        "buses:",
        *(
            f"  b{e}: {{type: modbus-tcp, host: 127.0.0.1, port: {port}, timeout_secs: 0.8}}"
            for e, port in enumerate(ports)
        ),
        "meters:",
        *(
            f"  - {{id: m{i}, bus: b{i % endpoints}, unit: {i // endpoints + 1}, model: sdm630,"
            f" interval_secs: {interval_s:g}}}"
            for i in range(meters)
        ),
        "uplinks:",
        "  wattics:",
        f'    url: "{wattics_url}"',
        f"    username: {FAKE_USERNAME}",
        "    password: ${BENCH_WATTICS_PASSWORD}",
        "    meters:",
        *(f"      m{i}: {{id: stream-{i}}}" for i in range(meters)),
    ]
    return "\n".join(lines) + "\n"


def _polls(db: Path, start_ms: int, end_ms: int) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        rows = connection.execute(
            "SELECT meter, COUNT(*) FROM samples WHERE ts_ms >= ? AND ts_ms < ? GROUP BY meter",
            (start_ms, end_ms),
        ).fetchall()
    return {str(meter): int(count) for meter, count in rows}


def _stored_bytes_per_sample(db: Path) -> float:
    """Bytes of the database file per stored sample (values, index and all)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        (count,) = connection.execute("SELECT COUNT(*) FROM samples").fetchone()
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        free = connection.execute("PRAGMA freelist_count").fetchone()[0]
    return (pages - free) * page_size / max(1, count)


@contextlib.contextmanager
def _broker() -> Any:
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.mosquitto import MosquittoBroker
    from tests.fixtures.network import free_port

    broker = MosquittoBroker(free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


async def _measure(
    pid: int, seconds: float
) -> tuple[procstat.ProcSnapshot, procstat.ProcSnapshot, float, int]:
    start = procstat.snapshot(pid)
    began = time.monotonic()
    rss_max = start.rss_bytes
    while time.monotonic() - began < seconds:
        await asyncio.sleep(min(1.0, max(0.0, seconds - (time.monotonic() - began))))
        rss_max = max(rss_max, procstat.rss_bytes(pid))
    end = procstat.snapshot(pid)
    return start, end, time.monotonic() - began, max(rss_max, end.rss_bytes)


async def measure_shared_site(
    meters: int,
    endpoints: int,
    seconds: float,
    *,
    interval_s: float = 1.0,
    status_page: bool = True,
    bare: bool = False,
    warmup_s: float = 15.0,
) -> SiteFigures:
    """The daemon reading `meters` SDM630s over `endpoints` endpoints (see the module doc)."""
    sdm630 = load_builtin("sdm630")
    plan = plan_map(sdm630)
    with tempfile.TemporaryDirectory(prefix="mg-bench-") as directory, _broker() as broker:
        workdir = Path(directory)
        db = workdir / "data" / "gateway.sqlite3"
        async with (
            shared_endpoints(meters, endpoints, plan[0].address) as (ports, watch),
            _fake_process() as url,
        ):
            config = shared_config(
                workdir / "data",
                ports,
                meters,
                interval_s,
                wattics_url=url,
                mqtt_port=broker.port,
                status_page=status_page,
            )
            env = {"BENCH_WATTICS_PASSWORD": FAKE_PASSWORD}
            async with daemon_process(config, env, workdir) as pid:
                await asyncio.sleep(warmup_s)
                start_ms = math.ceil(time.time() / interval_s) * interval_s
                watch.recording = True
                start, end, elapsed, rss_max = await _measure(pid, seconds)
                watch.recording = False
                end_ms = math.floor(time.time() / interval_s) * interval_s
            polls = _polls(db, round(start_ms * 1000), round(end_ms * 1000))
            lateness = watch.lateness_ms(interval_s)
            boundaries = max(1, round((end_ms - start_ms) / interval_s))
            bare_cpu = bare_polls = None
            if bare:
                bare_cpu, bare_s = await _bare_loop(ports, meters, interval_s, seconds, watch)
                bare_polls = len(watch.times) / (meters * bare_s)
            per_sample = _stored_bytes_per_sample(db)
            log_lines = (workdir / "daemon.log").read_text(errors="replace").splitlines()
    missed = sum(max(0, boundaries - polls.get(f"m{i}", 0)) for i in range(meters))
    return SiteFigures(
        meters=meters,
        endpoints=endpoints,
        seconds=elapsed,
        cpu_pct=100 * (end.cpu_s - start.cpu_s) / elapsed,
        rss_max_mb=rss_max / MB,
        polls_per_meter_s=sum(polls.values()) / (meters * boundaries),
        missed_boundaries=missed,
        lateness_ms=lateness,
        write_bytes_per_day=(end.write_bytes - start.write_bytes) / elapsed * 86_400,
        bytes_per_sample=per_sample,
        bare_cpu_pct=bare_cpu,
        bare_polls_per_meter_s=bare_polls,
        warnings=sum(" WARNING " in line or " ERROR " in line for line in log_lines),
        log_tail=log_lines[-5:],
    )


# -- the bare pymodbus loop ---------------------------------------------------------------------


async def _bare_loop(
    ports: list[int], meters: int, interval_s: float, seconds: float, watch: _FirstRequests
) -> tuple[float, float]:
    """(CPU % of one core, seconds measured) of a child process polling like the daemon,
    with pymodbus alone."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.site_scale",
        "bare",
        ",".join(map(str, ports)),
        str(meters),
        str(interval_s),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(30):
            await child.stdout.readline()  # "ready": imported and connected
        await asyncio.sleep(min(5.0, seconds / 4))
        watch.times.clear()
        watch.recording = True
        start, end, elapsed, _ = await _measure(child.pid, seconds)
        watch.recording = False
        if child.returncode is not None:
            raise RuntimeError("the bare pymodbus loop died")
        return 100 * (end.cpu_s - start.cpu_s) / elapsed, elapsed
    finally:
        child.terminate()
        await child.wait()


async def _bare(ports: list[int], meters: int, interval_s: float) -> None:
    from pymodbus.client import AsyncModbusTcpClient

    plan = plan_map(load_builtin("sdm630"))
    endpoints = len(ports)
    clients = [AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1) for port in ports]
    for client in clients:
        await client.connect()
    print("ready", flush=True)

    async def poll_endpoint(e: int) -> None:
        client = clients[e]
        units = [i // endpoints + 1 for i in range(meters) if i % endpoints == e]
        while True:
            await asyncio.sleep(interval_s - time.time() % interval_s)
            for unit in units:
                for request in plan:
                    call: Callable[..., Awaitable[Any]] = (
                        client.read_input_registers
                        if request.table == "input"
                        else client.read_holding_registers
                    )
                    await call(request.address, count=request.count, device_id=unit)

    async with asyncio.TaskGroup() as group:
        for e in range(endpoints):
            group.create_task(poll_endpoint(e))


def main(argv: list[str]) -> int:
    if argv[:1] == ["bare"]:
        ports = [int(p) for p in argv[1].split(",")]
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_bare(ports, int(argv[2]), float(argv[3])))
        return 0
    from bench.resources import run_seconds

    meters, endpoints = (int(argv[0]), int(argv[1])) if len(argv) >= 2 else (50, 1)
    print(asyncio.run(measure_shared_site(meters, endpoints, run_seconds(), bare=True)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main(sys.argv[1:]))
