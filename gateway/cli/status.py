"""`meter-gateway status [-c FILE] [--json]`: is everything arriving? From the store alone, so it
works whether the daemon runs or not, and never slows it.

It reads the store read-only (gateway.store.reader): the newest sample of every meter, every
stream's backlog and dead letters and the store's size, afresh; and the daemon's last status
snapshot (gateway.ops.snapshot) for what only the daemon knows (meter errors, uplink results,
delivery rates, PTS windows). A snapshot older than `snapshot.STALE_AFTER_S` means the daemon
is not running. Exit 0 when all is well, 1 when something needs attention (each thing is
listed), 2 on a config error (gateway.cli.main).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from gateway.config.redaction import redactor_for
from gateway.config.schema import Config
from gateway.ops import snapshot
from gateway.ops.status_assess import Attention, age_s, assess, duration_text, eta_text
from gateway.ops.status_facts import SCHEMA
from gateway.ops.status_page.numbers import bytes_text, count_text, human, utc_text
from gateway.store.reader import StoreMissing, StoreReader

EXIT_OK = 0
EXIT_ATTENTION = 1
DB_FILE = "gateway.sqlite3"  # gateway.daemon.DB_FILE (not imported: the daemon's whole tree)


def store_path(config: Config) -> Path:
    return Path(config.gateway.data_dir) / DB_FILE


def skeleton(config: Config) -> dict[str, Any]:
    """The document before any daemon saved one: the configured meters and uplinks, unknown."""
    return {
        "schema": SCHEMA,
        "gateway": {
            "id": config.gateway.id,
            "version": None,
            "pid": None,
            "started_ms": None,
            "heartbeat_ms": None,
            "stopped_ms": None,
            "last_sample_ms": None,
            "page": None,
        },
        "meters": {},
        "buses": {},
        "uplinks": {},
        "store": {"bytes": None, "budget_bytes": None, "full": False},
        "clock": {},
        "mqtt": {"configured": config.mqtt is not None, "connected": None},
        "alerts": [],
        "alerts_total": 0,
    }


def _meter_entry(meter_id: str, config: Config) -> dict[str, Any]:
    meter = next((m for m in config.meters if m.id == meter_id), None)
    return {
        "state": "unknown",
        "bus": None if meter is None else meter.bus,
        "interval_secs": None if meter is None else meter.interval_secs,
        "last_error": None,
        "errors_total": 0,
        "errors": {},
    }


def gather(config: Config, reader: StoreReader) -> dict[str, Any]:
    """The saved document with the store's own figures read now laid over it."""
    with reader.snapshot():
        saved = snapshot.load(reader)
        newest = reader.newest_samples()
        cursors = reader.cursors()
        dead = reader.dead_letters()
        used = reader.used_bytes()
        configured = {name for name, section in config.uplinks if section is not None}
        backlogs = {
            (c.uplink, c.stream): (c.meter, reader.backlog(c.meter, c.position))
            for c in cursors
            if c.uplink in configured
        }
    if saved is not None and saved.get("schema") != SCHEMA:
        saved = None
    doc = saved or skeleton(config)
    meters: dict[str, Any] = doc["meters"]
    for meter in config.meters:
        meters.setdefault(meter.id, _meter_entry(meter.id, config))
    for meter_id, entry in meters.items():
        entry["last_sample_ms"] = newest.get(meter_id)
    known = [ts for meter_id, ts in newest.items() if meter_id in meters]
    doc["gateway"]["last_sample_ms"] = max(known) if known else None
    uplinks: dict[str, Any] = doc["uplinks"]
    for name in list(uplinks):
        if name not in configured:
            del uplinks[name]
    for (name, stream), (meter_id, backlog) in sorted(backlogs.items()):
        entry = uplinks.setdefault(name, _uplink_entry())
        figures = entry["streams"].setdefault(stream, {"drain_per_s": None})
        drain = figures.get("drain_per_s")
        figures.update(
            meter=meter_id,
            backlog_rows=backlog.rows,
            oldest_undelivered_ms=backlog.oldest_ts_ms,
            dead_letters=dead.get((name, stream), 0),
            eta_s=0.0 if backlog.rows == 0 else (backlog.rows / drain if drain else None),
        )
    for stream_map in (u["streams"] for u in uplinks.values()):
        for stream in [s for s, f in stream_map.items() if "backlog_rows" not in f]:
            del stream_map[stream]  # saved by the daemon, but no cursor in the store
    budget = int(config.gateway.disk_budget_mb * 1024 * 1024)
    doc["store"].update(bytes=used, budget_bytes=budget)
    doc["store"]["full"] = bool(doc["store"].get("full")) or used >= budget
    clean: dict[str, Any] = redactor_for(config).value(doc)
    return clean


def _uplink_entry() -> dict[str, Any]:
    return {
        "delivered": None,
        "retries": None,
        "parked": None,
        "last_success_ms": None,
        "last_error": None,
        "last_error_ms": None,
        "paused_reason": None,
        "facts": {},
        "streams": {},
    }


def is_running(doc: dict[str, Any], now_ms: int) -> bool:
    gateway = doc["gateway"]
    if gateway.get("stopped_ms") is not None:
        return False
    age = age_s(gateway.get("heartbeat_ms"), now_ms)
    return age is not None and age <= snapshot.STALE_AFTER_S


def run(config: Config, *, as_json: bool = False, now_ms: int | None = None) -> int:
    """Print the status; 0 all well, 1 something needs attention."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    path = store_path(config)
    try:
        reader = StoreReader(path)
    except StoreMissing:
        doc, running = skeleton(config), False
        attention = [
            Attention("store", f"no store at {path}: the daemon has not run with this data_dir")
        ]
    else:
        with reader:
            doc = gather(config, reader)
        running = is_running(doc, now)
        attention = assess(doc, now, running=running)
    if as_json:
        doc.update(
            now_ms=now,
            running=running,
            ok=not attention,
            attention=[item.as_json() for item in attention],
        )
        print(json.dumps(doc, indent=2, sort_keys=False))
    else:
        print(describe(doc, attention, now, running=running))
    return EXIT_OK if not attention else EXIT_ATTENTION


def describe(doc: dict[str, Any], attention: list[Attention], now: int, *, running: bool) -> str:
    """The text `systemctl status` users expect: a verdict line, what needs attention, then
    meters, uplinks, PTS, store, clock and the newest alerts."""
    from gateway.cli.tables import render_table

    gateway = doc["gateway"]
    dot = "●" if running else "○"
    if running:
        pid = gateway.get("pid")
        alive = "" if pid is None or _alive(int(pid)) else " (pid not found on this machine)"
        state = (
            f"running (pid {pid}{alive}) since {utc_text(gateway.get('started_ms'))} "
            f"({duration_text(age_s(gateway.get('started_ms'), now))})"
        )
    elif gateway.get("stopped_ms") is not None:
        state = f"stopped at {utc_text(gateway['stopped_ms'])}"
    elif gateway.get("heartbeat_ms") is not None:
        state = f"NOT running: last heard from at {utc_text(gateway['heartbeat_ms'])}"
    else:
        state = "never ran with this store"
    lines = [
        f"{dot} meter-gateway {gateway['id']} - {state}",
        f"  last sample: {utc_text(gateway.get('last_sample_ms'))} "
        f"({duration_text(age_s(gateway.get('last_sample_ms'), now))} ago)"
        + (f"; status page: {gateway['page']}" if running and gateway.get("page") else ""),
    ]
    if attention:
        lines.append(f"  NEEDS ATTENTION ({len(attention)}):")
        lines += [f"    ✗ {item}" for item in attention]
    else:
        lines.append("  all well")
    meter_rows = [
        [
            meter_id,
            str(m.get("state", "unknown")),
            utc_text(m.get("last_sample_ms")),
            duration_text(age_s(m.get("last_sample_ms"), now)),
            count_text(m.get("errors_total")),
            _short(m.get("last_error")),
        ]
        for meter_id, m in doc["meters"].items()
    ]
    if meter_rows:
        lines += ["", "Meters"]
        headers = ["METER", "STATE", "LAST SAMPLE", "AGE", "ERRORS", "LAST ERROR"]
        lines += _indent(render_table(headers, meter_rows))
    stream_rows = []
    for name, uplink in doc["uplinks"].items():
        for stream, s in uplink["streams"].items():
            oldest_age = age_s(s.get("oldest_undelivered_ms"), now)
            stream_rows.append(
                [
                    f"{name}/{stream}",
                    count_text(s.get("backlog_rows")),
                    duration_text(oldest_age) if s.get("backlog_rows") else "-",
                    count_text(s.get("dead_letters")),
                    eta_text(s.get("eta_s"), s.get("backlog_rows") or 0, oldest_age),
                    utc_text(uplink.get("last_success_ms")),
                    _short(uplink.get("last_error")),
                ]
            )
    if stream_rows:
        lines += ["", "Uplinks"]
        headers = ["STREAM", "WAITING", "OLDEST", "DEAD", "ETA", "LAST SUCCESS", "LAST ERROR"]
        lines += _indent(render_table(headers, stream_rows))
    lines += _pts_lines(doc)
    store = doc["store"]
    used, budget = store.get("bytes"), store.get("budget_bytes")
    share = f" ({100 * used / budget:.1f} %)" if used is not None and budget else ""
    lines += ["", f"Store: {bytes_text(used)} of {bytes_text(budget)}{share}"]
    clock = doc.get("clock", {})
    if clock:
        trusted = {True: "trusted", False: "NOT trusted", None: "unknown"}[clock.get("trusted")]
        lines.append(f"Clock: {trusted}")
    mqtt = doc.get("mqtt", {})
    if mqtt.get("configured"):
        connected = {True: "connected", False: "NOT connected", None: "unknown"}
        lines.append(f"MQTT: {connected[mqtt.get('connected')]} ({mqtt.get('broker')})")
    alerts = doc.get("alerts", [])
    if alerts:
        lines += ["", f"Alerts (newest first, {doc.get('alerts_total', len(alerts))} since start)"]
        lines += [
            f"  {utc_text(a['ts_ms'])}  {a['source']}: {_short(a['message'], 120)}"
            for a in alerts[:10]
        ]
    if not running and doc["gateway"].get("heartbeat_ms") is not None:
        lines += ["", "(errors, rates and PTS facts as of the daemon's last snapshot)"]
    return "\n".join(lines)


def _pts_lines(doc: dict[str, Any]) -> list[str]:
    pts = doc["uplinks"].get("pts")
    systems = (pts or {}).get("facts", {}).get("systems")
    if not isinstance(systems, dict) or not systems:
        return []
    lines = ["", "PTS"]
    for system, info in systems.items():
        window = info.get("window") or {}
        reading = info.get("reading") or {}
        quota = info.get("quota") or {}
        quota_text = ", ".join(f"{k} {v}" for k, v in quota.items() if not isinstance(v, dict))
        value = reading.get("MeterValue", reading.get("value"))
        reading_text = (
            f"{human(value, '') if isinstance(value, float) else value} at "
            f"{reading.get('MeterDate', reading.get('ts'))}"
            if reading
            else "none yet"
        )
        lines.append(
            f"  system {system}: {info.get('period')} window {window.get('open')} - "
            f"{window.get('close')}: {info.get('state')}; reading {reading_text}; "
            f"quota {quota_text or '-'}"
        )
    return lines


def _short(text: Any, limit: int = 60) -> str:
    if not text:
        return "-"
    flat = str(text).replace("\n", " ")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _indent(block: str) -> list[str]:
    return [f"  {line}" for line in block.splitlines()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
