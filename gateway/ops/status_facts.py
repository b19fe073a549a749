"""The facts `meter-gateway status`, the status page and /metrics show, gathered from the
running daemon into one plain JSON document (times as UTC epoch ms; ages are computed by
whoever shows them, at their own now).

Invariants:
- Built from snapshots only (Health, StoreFigures, History): building it reads no meter, no
  cloud and no store.
- It never holds a secret: secret config values are never put in, and every configured secret
  value is masked wherever it appears in a string, by the one redaction step (core.redact,
  gateway.config.redaction: a short one only where it is the whole string).
- The same document is persisted for `status` (gateway.ops.snapshot), so the command shows
  what the page shows, plus the store's own figures read afresh.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.channels import CHANNEL_UNITS
from core.health import Health
from gateway.config.redaction import redactor_for
from gateway.config.schema import Config
from gateway.ops.figures import StoreFigures
from gateway.ops.history import History
from gateway.store.async_store import AsyncStore

#: Version of the document's shape (persisted: `status` of a newer release reads older ones).
SCHEMA = 1
#: Alerts carried, newest first.
MAX_ALERTS = 50


@dataclass
class LiveState:
    """Everything of the running daemon the status shows (read, never written, here)."""

    config: Config
    health: Health
    version: str
    figures: StoreFigures
    history: History
    astore: AsyncStore
    mqtt_connected: Callable[[], bool] | None = None
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    pid: int = field(default_factory=os.getpid)
    #: Where the status page listens, once it does ("http://127.0.0.1:8480/").
    page_url: str | None = None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def live_facts(live: LiveState, *, now_ms: int | None = None) -> dict[str, Any]:
    """The status document of the running daemon."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    config, health = live.config, live.health
    meters_config = {meter.id: meter for meter in config.meters}
    stored = live.astore.stored
    meters: dict[str, Any] = {}
    for meter_id in [*meters_config, *(m for m in health.meters if m not in meters_config)]:
        state = health.meter(meter_id) if meter_id in meters_config else health.meters[meter_id]
        configured = meters_config.get(meter_id)
        meters[meter_id] = {
            "state": str(state.state),
            "bus": None if configured is None else configured.bus,
            "interval_secs": None if configured is None else configured.interval_secs,
            "last_sample_ms": live.astore.last_ts(meter_id),
            "last_read_ms": state.last_read_ts_ms,
            "reads": state.reads,
            "stored": stored.get(meter_id, 0),
            "errors": dict(state.errors),
            "errors_total": sum(state.errors.values()),
            "consecutive_errors": state.consecutive_errors,
            "last_error": state.last_error,
            "next_attempt_ms": state.next_attempt_ts_ms,
            "skipped_ticks": state.skipped_ticks,
            "counter_problems": state.counter_resets + state.counter_jumps,
            "last_counter_problem": state.last_counter_problem,
            "values": {k: _finite(v) for k, v in state.last_values.items()},
            "units": {k: CHANNEL_UNITS[k] for k in state.last_values if k in CHANNEL_UNITS},
            "facts": dict(state.facts),
        }
    buses = {
        name: {
            "state": str(bus.state),
            "requests": bus.transactions,
            "errors": dict(bus.errors),
            "errors_total": sum(bus.errors.values()),
            "reconnects": bus.reconnects,
            "last_error": bus.last_error,
            "busy_s": round(bus.busy_s, 3),
        }
        for name, bus in health.buses.items()
    }
    uplinks: dict[str, Any] = {}
    for name in sorted({*health.uplinks, *(u for u, _ in live.figures.streams)}):
        uplink = health.uplink(name)
        uplinks[name] = {
            "delivered": uplink.delivered,
            "retries": uplink.retries,
            "parked": uplink.parked,
            "last_success_ms": uplink.last_success_ms,
            "last_error": uplink.last_error,
            "last_error_ms": uplink.last_error_ms,
            "paused_reason": uplink.paused_reason,
            "facts": dict(uplink.facts),
            "streams": {
                s.stream: {
                    "meter": s.meter,
                    "backlog_rows": s.backlog_rows,
                    "oldest_undelivered_ms": s.oldest_undelivered_ts_ms,
                    "dead_letters": s.dead_letters,
                    "passed": s.passed_total,
                    "delivery_per_s": _finite(s.delivery_per_s),
                    "drain_per_s": _finite(s.drain_per_s),
                    "eta_s": _finite(s.eta_s),
                }
                for s in live.figures.of_uplink(name)
            },
        }
    newest = [m["last_sample_ms"] for m in meters.values() if m["last_sample_ms"] is not None]
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "gateway": {
            "id": config.gateway.id,
            "version": live.version,
            "pid": live.pid,
            "started_ms": live.started_ms,
            "heartbeat_ms": now,
            "stopped_ms": None,
            "last_sample_ms": max(newest) if newest else None,
            "page": live.page_url,
        },
        "meters": meters,
        "buses": buses,
        "uplinks": uplinks,
        "store": {
            "bytes": live.figures.store_bytes,
            "budget_bytes": live.figures.budget_bytes,
            "full": health.store_full,
            "measured_ms": live.figures.measured_ms,
        },
        "clock": {
            "trusted": health.clock_trusted,
            "synchronized": health.clock_synchronized,
            **dataclasses.asdict(health.clock),
        },
        "mqtt": {
            "configured": config.mqtt is not None,
            "broker": None if config.mqtt is None else f"{config.mqtt.host}:{config.mqtt.port}",
            "connected": None if live.mqtt_connected is None else live.mqtt_connected(),
        },
        "alerts": [
            {"ts_ms": a.ts_ms, "source": a.source, "message": a.message}
            for a in reversed(health.alerts)
        ][:MAX_ALERTS],
        "alerts_total": health.alerts_total,
    }
    clean: dict[str, Any] = redactor_for(config).value(document)
    return clean
