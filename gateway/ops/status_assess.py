"""What needs attention, decided once from a status document (gateway.ops.status_facts) for
`meter-gateway status`, the status page and /metrics alike.

Each rule is one sentence an installer can act on. The thresholds are documented in
docs/status-page.md (section "What needs attention").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: An alert raised this recently still needs attention.
RECENT_ALERT_S = 15 * 60
#: The store this full (share of its budget) needs attention before it refuses samples.
STORE_WARN_SHARE = 0.9
#: A meter whose newest stored sample is older than max(this, 3 intervals) needs attention.
STALE_SAMPLE_MIN_S = 60.0
#: The oldest undelivered sample of a stream may be this old before it needs attention. An
#: EnerKey stream sends whole hours (its backlog holds the hour being filled); PTS keeps its
#: samples until the monthly window (its "backlog" is not a delay at all).
LAG_ATTENTION_S: dict[str, float | None] = {"enerkey": 2 * 3600 + 15 * 60, "pts": None}
DEFAULT_LAG_ATTENTION_S = 20 * 60.0
#: PTS system states that need a human.
PTS_NEEDS_HUMAN = ("needs a human", "closed without a passed reading", "blocked")


@dataclass(frozen=True, slots=True)
class Attention:
    subject: str
    message: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}"

    def as_json(self) -> dict[str, str]:
        return {"subject": self.subject, "message": self.message}


def age_s(ts_ms: int | None, now_ms: int) -> float | None:
    return None if ts_ms is None else max(0.0, (now_ms - ts_ms) / 1000)


def duration_text(seconds: float | None) -> str:
    """`42 s`, `12 min`, `3.5 h`, `2.1 d`; `-` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


#: A backlog whose oldest sample is younger than this is normal delivery lag (cursors are
#: committed every few seconds), not a backlog to drain.
KEEPING_UP_S = 120.0


def eta_text(eta_s: float | None, backlog: int, oldest_age_s: float | None) -> str:
    """`up to date`, `keeping up`, `drains in 12 min` or `not draining`."""
    if backlog == 0:
        return "up to date"
    if oldest_age_s is not None and oldest_age_s < KEEPING_UP_S:
        return "keeping up"
    if eta_s is None:
        return "not draining"
    return f"drains in {duration_text(eta_s)}"


def lag_limit_s(uplink: str) -> float | None:
    return LAG_ATTENTION_S.get(uplink, DEFAULT_LAG_ATTENTION_S)


def assess(doc: dict[str, Any], now_ms: int, *, running: bool = True) -> list[Attention]:
    """Everything in `doc` that needs attention, most important first."""
    found: list[Attention] = []
    gateway = doc.get("gateway", {})
    if not running:
        stopped = gateway.get("stopped_ms")
        heard = gateway.get("heartbeat_ms")
        if stopped is not None:
            why = f"stopped {duration_text(age_s(stopped, now_ms))} ago"
        elif heard is not None:
            why = f"not heard from for {duration_text(age_s(heard, now_ms))} (crashed or hung?)"
        else:
            why = "has not run with this store yet"
        found.append(Attention("daemon", f"not running: {why}; nothing is read or sent"))
    store = doc.get("store", {})
    if store.get("full"):
        found.append(Attention("store", "full: new samples are REFUSED (raise the budget)"))
    used, budget = store.get("bytes"), store.get("budget_bytes")
    if used is not None and budget and used >= STORE_WARN_SHARE * budget and not store["full"]:
        found.append(Attention("store", f"at {100 * used / budget:.0f} % of its disk budget"))
    clock = doc.get("clock", {})
    if running and clock.get("trusted") is False:
        found.append(Attention("clock", "not trusted yet: readings are held, not stored"))
    for meter_id, meter in doc.get("meters", {}).items():
        found.extend(_meter(meter_id, meter, now_ms, running=running))
    for name, bus in doc.get("buses", {}).items():
        if running and bus.get("state") == "offline":
            found.append(Attention(f"bus {name}", f"offline: {bus.get('last_error') or '?'}"))
    for name, uplink in doc.get("uplinks", {}).items():
        found.extend(_uplink(name, uplink, now_ms))
    mqtt = doc.get("mqtt", {})
    if running and mqtt.get("configured") and mqtt.get("connected") is False:
        found.append(Attention("mqtt", f"not connected to the broker {mqtt.get('broker')}"))
    for alert in doc.get("alerts", []):
        age = age_s(alert.get("ts_ms"), now_ms)
        if age is not None and age <= RECENT_ALERT_S:
            ago = duration_text(age)
            found.append(Attention(f"alert ({alert['source']})", f"{alert['message']} ({ago} ago)"))
    return found


def _meter(meter_id: str, meter: dict[str, Any], now_ms: int, *, running: bool) -> list[Attention]:
    subject = f"meter {meter_id}"
    if not running:
        return []
    state = meter.get("state")
    errors = meter.get("errors_total", 0)
    if state in ("offline", "degraded"):
        return [Attention(subject, f"{state}: {meter.get('last_error')} ({errors} error(s))")]
    interval = meter.get("interval_secs") or 0
    limit = max(STALE_SAMPLE_MIN_S, 3 * interval)
    age = age_s(meter.get("last_sample_ms"), now_ms)
    if state == "ok" and interval and age is not None and age > limit:
        return [Attention(subject, f"reads, but no sample stored for {duration_text(age)}")]
    return []


def _uplink(name: str, uplink: dict[str, Any], now_ms: int) -> list[Attention]:
    found: list[Attention] = []
    if uplink.get("paused_reason"):
        found.append(Attention(f"uplink {name}", f"paused: {uplink['paused_reason']}"))
    limit = lag_limit_s(name)
    for stream, figures in uplink.get("streams", {}).items():
        subject = f"uplink {name}/{stream}"
        dead = figures.get("dead_letters") or 0
        if dead:
            found.append(
                Attention(
                    subject,
                    f"{dead} dead letter(s): see `meter-gateway deadletters --uplink {name}`",
                )
            )
        age = age_s(figures.get("oldest_undelivered_ms"), now_ms)
        if limit is not None and age is not None and age > limit:
            eta = figures.get("eta_s")
            when = "not draining" if eta is None else f"drains in {duration_text(eta)}"
            found.append(
                Attention(
                    subject,
                    f"{figures.get('backlog_rows')} sample(s) waiting, the oldest "
                    f"{duration_text(age)} old ({when}); last error: "
                    f"{uplink.get('last_error') or 'none'}",
                )
            )
    systems = uplink.get("facts", {}).get("systems")
    if isinstance(systems, dict):
        for system, facts in systems.items():
            state = str(facts.get("state", "")) if isinstance(facts, dict) else ""
            if any(words in state for words in PTS_NEEDS_HUMAN):
                found.append(Attention(f"pts system {system}", state))
    return found
