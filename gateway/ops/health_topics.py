"""Health rendered as the retained MQTT state topics, (topic suffix, payload) pairs with no
broker in sight: the monitor publishes them, tests and tools can render them on their own.

Invariants:
- Payloads are plain JSON: NaN and infinities become null (a strict parser would reject the
  whole payload), times are ISO 8601 UTC with milliseconds.
- A `HealthRenderer` keeps the little history its rates need (samples per minute, bus
  utilisation), each averaged over at least `rate_window_s`; a rendering without history
  (`health_messages`) averages since start.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from core.channels import CHANNEL_UNITS
from core.health import Alert, BusHealth, Health, MeterHealth, UplinkHealth
from core.sample import Sample

#: Rates (samples per minute, bus utilisation) are averaged over at least this window.
RATE_WINDOW_S = 60.0


def _iso(ts_ms: int | None) -> str | None:
    if ts_ms is None:
        return None
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _finite(value: float | None) -> float | None:
    """JSON has no NaN/Infinity; a subscriber's strict parser would reject the whole payload."""
    return value if value is not None and math.isfinite(value) else None


def _errors(errors: Mapping[str, int]) -> dict[str, Any]:
    """Failures by kind and their total, as the meter and bus topics show them."""
    return {"errors": dict(errors), "errors_total": sum(errors.values())}


def meter_state(meter: MeterHealth) -> dict[str, Any]:
    """`meters/<id>/state`: values in canonical units (Wh for energy), listed in `units`."""
    return {
        "state": str(meter.state),
        "reads": meter.reads,
        **_errors(meter.errors),
        "consecutive_errors": meter.consecutive_errors,
        "skipped_ticks": meter.skipped_ticks,
        "refused_older": meter.refused_older,
        "last_error": meter.last_error,
        "last_read_ts": _iso(meter.last_read_ts_ms),
        "last_latency_s": _finite(meter.last_latency_s),
        "last_lateness_s": _finite(meter.last_lateness_s),
        "late_reads": meter.late_reads,
        "next_attempt_ts": _iso(getattr(meter, "next_attempt_ts_ms", None)),
        "values": {name: _finite(value) for name, value in meter.last_values.items()},
        "units": {name: CHANNEL_UNITS[name] for name in meter.last_values if name in CHANNEL_UNITS},
        "counter_resets": meter.counter_resets,
        "counter_jumps": meter.counter_jumps,
        "last_counter_problem": meter.last_counter_problem,
        "refused_clock_step": meter.refused_clock_step,
        "implausible_values": meter.implausible_values,
        "last_implausible": meter.last_implausible,
        "facts": dict(meter.facts),
    }


def uplink_state(uplink: UplinkHealth, *, now_ms: int | None = None) -> dict[str, Any]:
    """`uplinks/<name>/state`; backlog figures are None until the daemon first measured them."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    oldest = uplink.oldest_undelivered_ts_ms
    return {
        "delivered": uplink.delivered,
        "retries": uplink.retries,
        "parked": uplink.parked,
        "last_success": _iso(uplink.last_success_ms),
        "last_error": uplink.last_error,
        "last_error_ts": _iso(uplink.last_error_ms),
        "paused_reason": uplink.paused_reason,
        "backlog_rows": uplink.backlog_rows,
        "oldest_undelivered": _iso(oldest),
        "oldest_undelivered_age_s": None if oldest is None else max(0, (now - oldest) // 1000),
        "dead_letters": uplink.dead_letters,
        "facts": dict(uplink.facts),
    }


def bus_state(bus: BusHealth, *, utilisation: float | None, now_monotonic: float) -> dict[str, Any]:
    """`buses/<id>/state`; `utilisation` is the busy share over the last minute or so."""
    return {
        "state": str(bus.state),
        "transactions": bus.transactions,
        **_errors(bus.errors),
        "reconnects": bus.reconnects,
        "last_error": bus.last_error,
        "busy_s": round(bus.busy_s, 3),
        "utilisation": None if utilisation is None else round(utilisation, 4),
        "utilisation_since_start": round(bus.utilisation(now_monotonic), 4),
    }


class _Rate:
    """Growth per second of a counter over a sliding window of at least `window_s`."""

    def __init__(self, window_s: float, start: tuple[float, float]) -> None:
        self.window_s = window_s
        self._points: deque[tuple[float, float]] = deque([start])

    def update(self, now: float, value: float) -> float | None:
        self._points.append((now, value))
        while len(self._points) > 2 and now - self._points[1][0] >= self.window_s:
            self._points.popleft()
        then, before = self._points[0]
        return (value - before) / (now - then) if now > then else None


class HealthRenderer:
    """Health as retained state topics: `state`, `meters/<id>/state`, `buses/<id>/state`,
    `uplinks/<name>/state`. Keeps the little history rates need; one per monitor."""

    def __init__(self, version: str, *, rate_window_s: float = RATE_WINDOW_S) -> None:
        self.version = version
        self.rate_window_s = rate_window_s
        self._reads: _Rate | None = None
        self._busy: dict[str, _Rate] = {}

    def render(
        self,
        health: Health,
        *,
        now_monotonic: float | None = None,
        now_ms: int | None = None,
        extra_state: Mapping[str, Any] | None = None,
    ) -> list[tuple[str, dict[str, Any]]]:
        now = time.monotonic() if now_monotonic is None else now_monotonic
        wall_ms = int(time.time() * 1000) if now_ms is None else now_ms
        uptime = max(0.0, now - health.started_monotonic)
        if self._reads is None:
            self._reads = _Rate(self.rate_window_s, (health.started_monotonic, 0))
        per_s = self._reads.update(now, sum(m.reads for m in health.meters.values()))
        last_alert = health.alerts[-1] if health.alerts else None
        budget = health.store_budget_bytes
        used = health.store_bytes
        states = [str(m.state) for m in health.meters.values()]
        state: dict[str, Any] = {
            "version": self.version,
            "started": _iso(wall_ms - round(uptime * 1000)),
            "uptime_s": round(uptime),
            "store_bytes": used,
            "store_budget_bytes": budget,
            "store_used_pct": None if used is None or not budget else round(100 * used / budget, 2),
            "store_full": health.store_full,
            "clock_trusted": health.clock_trusted,
            "clock_synchronized": health.clock_synchronized,
            "clock": dataclasses.asdict(health.clock),
            "samples_per_min": None if per_s is None else round(60 * per_s, 2),
            "meters": {name: states.count(name) for name in ("ok", "degraded", "offline")},
            "alerts": len(health.alerts),
            "last_alert": None if last_alert is None else alert_message(last_alert),
            **(extra_state or {}),
        }
        messages: list[tuple[str, dict[str, Any]]] = [("state", state)]
        messages += [(f"meters/{m.meter}/state", meter_state(m)) for m in health.meters.values()]
        for bus in health.buses.values():
            rate = self._busy.get(bus.bus)
            if rate is None:
                rate = self._busy[bus.bus] = _Rate(self.rate_window_s, (bus.since_monotonic, 0.0))
            busy = rate.update(now, bus.busy_s)
            utilisation = None if busy is None else min(1.0, max(0.0, busy))
            messages.append(
                (
                    f"buses/{bus.bus}/state",
                    bus_state(bus, utilisation=utilisation, now_monotonic=now),
                )
            )
        messages += [
            (f"uplinks/{u.uplink}/state", uplink_state(u, now_ms=wall_ms))
            for u in health.uplinks.values()
        ]
        return messages


def health_messages(
    health: Health, *, version: str, now_monotonic: float | None = None, now_ms: int | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """One rendering without history (rates are averages since start)."""
    return HealthRenderer(version).render(health, now_monotonic=now_monotonic, now_ms=now_ms)


def alert_message(alert: Alert) -> dict[str, Any]:
    """One alert: `alerts` carries each as it is raised, `state` the last one as `last_alert`."""
    return {"ts": _iso(alert.ts_ms), "source": alert.source, "message": alert.message}


def sample_message(sample: Sample) -> dict[str, Any]:
    """`meters/<id>/values`: one sample as stored, canonical units."""
    return {
        "ts": _iso(sample.ts_ms),
        "ts_ms": sample.ts_ms,
        "values": {name: _finite(value) for name, value in sample.values.items()},
    }
