"""`python -m bench` (or ./dev.sh bench): run every benchmark, print one table."""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Row:
    name: str
    value: float
    unit: str
    target: str
    ok: bool | None


def _store_rows() -> list[Row]:
    from bench.store_ingest import measure_ingest

    figures = measure_ingest()
    return [
        Row(
            "store: durable ingest (batches of 1000, FULL)",
            figures["samples_per_s"],
            "samples/s",
            ">= 50000",
            figures["samples_per_s"] >= 50_000,
        ),
        Row(
            "store: single-sample commits (fsync each)",
            figures["commits_per_s"],
            "commits/s",
            "-",
            None,
        ),
    ]


def _wattics_rows() -> list[Row]:
    from bench.wattics_drain import measure_drain

    loopback = asyncio.run(measure_drain(n_packets=5000, concurrency=4))
    wan = asyncio.run(measure_drain(n_packets=400, concurrency=4, rounds=3, latency_secs=0.01))
    rows = [
        Row(
            "wattics: drain to local fake (loopback)",
            loopback["uplink_packets_per_s"],
            "packets/s",
            "-",
            None,
        ),
        Row(
            "wattics: bare aiohttp loop, same packets",
            loopback["bare_packets_per_s"],
            "packets/s",
            "-",
            None,
        ),
    ]
    for label, figures in (("loopback", loopback), ("fake answers in 10 ms", wan)):
        ratio = figures["ratio"]
        rows.append(
            Row(f"wattics: uplink / bare ratio ({label})", ratio, "x", ">= 0.8", ratio >= 0.8)
        )
    return rows


def _wattics_backlog_rows() -> list[Row]:
    from bench.wattics_drain import measure_backlog

    week = asyncio.run(measure_backlog())
    label = f"wattics: backlog 20 meters x 1 week x 1 min ({week['n_packets']:,.0f} packets)"
    return [
        Row(f"{label}, uplink", week["uplink_packets_per_s"], "packets/s", "-", None),
        Row(
            "wattics: backlog, uplink / bare ratio",
            week["ratio"],
            "x",
            ">= 0.8",
            week["ratio"] >= 0.8,
        ),
        Row(
            "wattics: backlog, time spanned / time to drain",
            week["real_time_factor"],
            "x",
            ">= 1000",
            week["real_time_factor"] >= 1000,
        ),
    ]


def _modbus_timing_rows() -> list[Row]:
    from bench.modbus_timing import measure_pipelining, measure_rtu, measure_tcp_cpu

    tcp = asyncio.run(measure_tcp_cpu())
    rows = []
    for units, cycles in ((2, 20), (8, 5)):
        rtu = asyncio.run(measure_rtu(cycles, units))
        rows += [
            Row(
                f"modbus rtu: {units}x SDM630 at 9600, wire time",
                rtu["wire_s"] * 1000,
                "ms/cycle",
                "-",
                None,
            ),
            Row(
                f"modbus rtu: {units}x, our extra time (pty)",
                rtu["extra_s"] * 1000,
                "ms/cycle",
                "-",
                None,
            ),
            Row(
                f"modbus rtu: {units}x, cycle / wire time",
                rtu["ratio"] * 100,
                "%",
                "<= 105",
                rtu["ratio"] <= 1.05,
            ),
        ]
    piped = asyncio.run(measure_pipelining())
    return [
        *rows,
        Row("modbus tcp: CPU per 1000 SDM630 reads", tcp["cpu_s_per_1000"] * 1000, "ms", "-", None),
        Row(
            "modbus tcp: 50 meters behind a queueing gateway, 1 in flight",
            piped["cycle_s_1"] * 1000,
            "ms/cycle",
            "-",
            None,
        ),
        Row("modbus tcp: same, max_in_flight 4", piped["cycle_s_4"] * 1000, "ms/cycle", "-", None),
        Row("modbus tcp: pipelining gain (4 vs 1 in flight)", piped["gain"], "x", "-", None),
    ]


def _modbus_plan_rows() -> list[Row]:
    from bench.modbus_plans import naive_requests, plan_rows
    from drivers.modbus.register_map import load_builtin

    return [
        Row(
            f"modbus plan: {model} requests per read",
            requests,
            "requests",
            f"min {minimum} (naive {naive_requests(load_builtin(model))})",
            None,
        )
        for model, requests, minimum in plan_rows()
    ]


def _enerkey_rows() -> list[Row]:
    from bench.enerkey_catchup import measure_enerkey

    figures = measure_enerkey(days=90)
    return [
        Row(
            "enerkey: 1-min samples -> hourly readings (store read + interpolate)",
            figures["samples_per_s"],
            "samples/s",
            "-",
            None,
        ),
        Row(
            f"enerkey: catch up {figures['days']:.0f} days ({figures['catchup_hours']:.0f} h) "
            "to local fake",
            figures["catchup_s"],
            "s",
            "<= 10",
            figures["catchup_s"] <= 10,
        ),
    ]


def _serial_rows() -> list[Row]:
    from bench.serial_decode import measure_decoding

    figures = measure_decoding()
    names = {
        "dsmr5": "serial: DSMR 5 P1 telegram decoded + mapped (dsmr-parser)",
        "emucs": "serial: Belgian e-MUCS P1 telegram decoded + mapped",
        "sml": "serial: SML file decoded + mapped (smllib)",
        "d0": "serial: D0 readout (13 lines) parsed + mapped",
    }
    # A meter sends at most one telegram per second; >= 100/s leaves a Pi ample headroom.
    return [
        Row(names[key], rate, "telegrams/s", ">= 100", rate >= 100) for key, rate in figures.items()
    ]


def _site_rows() -> list[Row]:
    """Real sites (bench.site_scale): many meters behind one endpoint, store + Wattics + MQTT
    values on, the daemon as a real process; MG_BENCH_SECONDS sets each run's length."""
    from bench.resources import run_seconds
    from bench.site_scale import measure_shared_site

    seconds = run_seconds()
    minutes = f"{seconds / 60:g} min"
    site = asyncio.run(measure_shared_site(50, 1, seconds, bare=True))
    quiet = asyncio.run(measure_shared_site(50, 1, seconds, status_page=False))
    big = asyncio.run(measure_shared_site(200, 1, seconds))
    spread = asyncio.run(measure_shared_site(200, 4, seconds))
    disk = asyncio.run(measure_shared_site(20, 1, max(seconds, 60.0), interval_s=10.0))
    ratio = site.cpu_ratio or 0.0
    rows = [
        Row(
            f"site: CPU, 50 meters on ONE Modbus TCP endpoint at 1 s ({minutes})",
            site.cpu_pct,
            "% of core",
            "<= 9",
            site.cpu_pct <= 9,
        ),
        _polls_row("site: polls, same run", site.polls_per_meter_s),
        _missed_row("site: missed boundaries, same run", site.missed_boundaries),
        Row("site: RSS (max), same run", site.rss_max_mb, "MB", "<= 50", site.rss_max_mb <= 50),
        Row(
            "site: bare pymodbus loop, same requests",
            site.bare_cpu_pct or 0,
            "% of core",
            "-",
            None,
        ),
        Row("site: our CPU per meter-poll / bare pymodbus", ratio, "x", "<= 2 (aim)", ratio <= 2),
    ]
    rows += [
        Row(f"site: read lateness {key} (first request - boundary)", value, "ms", "-", None)
        for key, value in site.lateness_ms.items()
    ]
    rows += [
        Row(
            "site: status page on - off, CPU (50 meters)",
            site.cpu_pct - quiet.cpu_pct,
            "% of core",
            "<= +1",
            site.cpu_pct - quiet.cpu_pct <= 1,
        ),
        Row(
            "site: status page on - off, RSS",
            site.rss_max_mb - quiet.rss_max_mb,
            "MB",
            "<= +5",
            site.rss_max_mb - quiet.rss_max_mb <= 5,
        ),
        Row(
            "site: CPU, 200 meters on one endpoint at 1 s",
            big.cpu_pct,
            "% of core",
            "<= 40",
            big.cpu_pct <= 40,
        ),
        _polls_row("site: polls, 200 meters on one endpoint", big.polls_per_meter_s),
        _missed_row("site: missed boundaries, 200 meters on one", big.missed_boundaries),
        Row("site: read lateness p99, 200 on one", big.lateness_ms.get("p99", 0), "ms", "-", None),
        Row(
            "site: WARNING/ERROR log lines, 200 on one (whole run)",
            big.warnings,
            "lines",
            "<= 2 per meter",
            big.warnings <= 2 * big.meters,
        ),
        Row("site: CPU, 200 meters on 4 endpoints at 1 s", spread.cpu_pct, "% of core", "-", None),
        _polls_row("site: polls, 200 meters on 4 endpoints", spread.polls_per_meter_s),
        _missed_row("site: missed boundaries, 200 on 4", spread.missed_boundaries),
        Row(
            "site: storage writes, 20 meters at 10 s",
            disk.write_bytes_per_day / 1e6,
            "MB/day",
            "<= 200",
            disk.write_bytes_per_day <= 200e6,
        ),
        Row(
            "site: stored bytes per sample (SDM630, index incl.)",
            disk.bytes_per_sample,
            "bytes",
            "-",
            None,
        ),
    ]
    return rows


def _polls_row(name: str, value: float) -> Row:
    return Row(name, value, "polls/meter/s", "1.00", value >= 0.995)


def _missed_row(name: str, value: int) -> Row:
    return Row(name, value, "boundaries", "0", value == 0)


def _daemon_rows() -> list[Row]:
    """The daemon draining a backlog (bench.resources); MG_BENCH_SECONDS sets its length."""
    from bench.resources import measure_backlog, run_seconds

    seconds = run_seconds()
    backlog = asyncio.run(measure_backlog(1_000_000, seconds))
    growth = backlog.rss_max_mb - backlog.rss_after_warmup_mb
    minutes = f"{seconds / 60:g} min"
    return [
        Row(
            f"daemon: RSS (max) draining a 1M-sample backlog ({minutes})",
            backlog.rss_max_mb,
            "MB",
            "<= 60",
            backlog.rss_max_mb <= 60,
        ),
        Row("daemon: RSS growth while draining", growth, "MB", "flat (<= 2)", growth <= 2),
        Row(
            "daemon: backlog drain rate (1M store, real process)",
            backlog.extra["drain_per_s"],
            "packets/s",
            "-",
            None,
        ),
    ]


SECTIONS: list[Callable[[], list[Row]]] = [
    _store_rows,
    _wattics_rows,
    _wattics_backlog_rows,
    _modbus_timing_rows,
    _modbus_plan_rows,
    _enerkey_rows,
    _serial_rows,
    _site_rows,
    _daemon_rows,
]


def main(argv: list[str] | None = None) -> int:
    """Every section, or those named (`python -m bench site modbus_timing`: `_site_rows`...)."""
    import os
    import sys

    wanted = sys.argv[1:] if argv is None else argv
    rows: list[Row] = []
    for section in SECTIONS:
        name = section.__name__.removeprefix("_").removesuffix("_rows")
        if not wanted or name in wanted:
            rows.extend(section())
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    print(f"meter-gateway benchmarks on {platform.machine()}, Python {platform.python_version()}")
    width = max(len(r.name) for r in rows)
    print(f"{'benchmark':<{width}}  {'value':>12}  {'unit':<10} {'target':<10} ok")
    for r in rows:
        mark = "-" if r.ok is None else ("yes" if r.ok else "NO")
        print(f"{r.name:<{width}}  {r.value:>12,.2f}  {r.unit:<10} {r.target:<10} {mark}")
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
