"""What every part knows about its own health, read by the monitor and the CLI.

Producers (poller, uplinks, store) update these plain objects synchronously; the monitor reads
them on its own schedule. So the data path never waits for MQTT (Home Assistant's coordinator
pattern: one owner writes, consumers read the last result).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)


#: Failed reads in a row after which a meter is OFFLINE (and retried on a slower schedule).
OFFLINE_AFTER = 3


class MeterState(StrEnum):
    UNKNOWN = "unknown"
    OK = "ok"
    DEGRADED = "degraded"
    OFFLINE = "offline"


@dataclass
class MeterHealth:
    meter: str
    state: MeterState = MeterState.UNKNOWN
    reads: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    consecutive_errors: int = 0
    skipped_ticks: int = 0
    refused_older: int = 0
    last_error: str | None = None
    last_read_ts_ms: int | None = None
    last_latency_s: float | None = None
    #: How long after its boundary the last read got the line (seconds), and how many reads
    #: started later than the on-time tolerance (stamped with their own start time).
    last_lateness_s: float | None = None
    late_reads: int = 0
    last_values: dict[str, float] = field(default_factory=dict)
    #: While offline: when the next (slower) retry is due, UTC epoch ms.
    next_attempt_ts_ms: int | None = None
    #: Samples flagged by gateway.counters: a counter went down / rose impossibly fast.
    counter_resets: int = 0
    counter_jumps: int = 0
    last_counter_problem: str | None = None
    #: Values outside their channel type's physical range, not stored (gateway.plausibility).
    implausible_values: int = 0
    last_implausible: str | None = None
    #: Samples not stored because the clock stepped back behind this meter's newest sample.
    refused_clock_step: int = 0
    #: Source-specific facts for operators (MTS: serial number read, meter clock offset); JSON.
    facts: dict[str, Any] = field(default_factory=dict)

    def read_failed(self, kind: str, message: str, *, what: str = "meter") -> None:
        """Count a failed read; log once when the meter turns degraded and once offline."""
        self.errors[kind] += 1
        self.consecutive_errors += 1
        self.last_error = f"{kind}: {message}"
        state = (
            MeterState.OFFLINE if self.consecutive_errors >= OFFLINE_AFTER else MeterState.DEGRADED
        )
        if state is not self.state:
            logger = log.error if state is MeterState.OFFLINE else log.warning
            logger("%s %s is %s: %s: %s", what, self.meter, state.value, kind, message)
            self.state = state

    def read_succeeded(self, *, what: str = "meter") -> None:
        """Count a good read; log once when a failing meter reads again."""
        if self.state is not MeterState.OK:
            if self.state is not MeterState.UNKNOWN:
                log.info(
                    "%s %s: reading again after %d error(s)",
                    what,
                    self.meter,
                    self.consecutive_errors,
                )
            self.state = MeterState.OK
        self.consecutive_errors = 0
        self.reads += 1


class BusState(StrEnum):
    UNKNOWN = "unknown"
    #: The port is open / the endpoint connected.
    OK = "ok"
    #: The port cannot be opened or the endpoint refuses connections (retried with backoff).
    OFFLINE = "offline"


@dataclass
class BusHealth:
    """One Modbus line or endpoint, shared by its meters (written by drivers.modbus.bus only)."""

    bus: str
    state: BusState = BusState.UNKNOWN
    #: Requests sent, answered or not.
    transactions: int = 0
    #: Failed transactions and connection attempts by kind (timeout, crc, exception, ...).
    errors: Counter[str] = field(default_factory=Counter)
    #: Seconds the line spent in transactions (request sent until answer or timeout).
    busy_s: float = 0.0
    #: Times the port/connection was opened again after it was lost.
    reconnects: int = 0
    last_error: str | None = None
    since_monotonic: float = field(default_factory=time.monotonic)

    def utilisation(self, now_monotonic: float | None = None) -> float:
        """Share of time the line was busy since it was created (0..1)."""
        now = time.monotonic() if now_monotonic is None else now_monotonic
        elapsed = now - self.since_monotonic
        return min(1.0, self.busy_s / elapsed) if elapsed > 0 else 0.0


@dataclass
class UplinkHealth:
    uplink: str
    delivered: int = 0
    retries: int = 0
    parked: int = 0
    last_success_ms: int | None = None
    last_error: str | None = None
    last_error_ms: int | None = None
    paused_reason: str | None = None
    # Filled periodically by the daemon from the store (None until first measured).
    backlog_rows: int | None = None
    oldest_undelivered_ts_ms: int | None = None
    dead_letters: int | None = None
    #: Uplink-specific facts for operators (PTS window, EnerKey calls left, ...); JSON values.
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClockHealth:
    """What the poller did about an untrusted or stepping wall clock (gateway.clock.hold)."""

    #: The sync check in use (gateway.clock.sync), for humans.
    check: str | None = None
    #: Readings held in memory now, waiting for a trusted clock.
    held: int = 0
    #: Held readings stamped once the clock was trusted.
    released: int = 0
    #: Samples stored flagged `clock_unsynced` (the clock never became trusted in time).
    unsynced_stored: int = 0
    #: Wall-clock steps seen while polling, and the last one (seconds, + forward).
    steps: int = 0
    last_step_s: float | None = None
    #: Samples not stored because the clock stepped back behind what is stored (all meters).
    refused_after_step: int = 0


@dataclass(frozen=True)
class Alert:
    ts_ms: int
    source: str
    message: str


@dataclass
class Health:
    started_monotonic: float = field(default_factory=time.monotonic)
    meters: dict[str, MeterHealth] = field(default_factory=dict)
    uplinks: dict[str, UplinkHealth] = field(default_factory=dict)
    buses: dict[str, BusHealth] = field(default_factory=dict)
    store_full: bool = False
    alerts: deque[Alert] = field(default_factory=lambda: deque(maxlen=100))
    #: Alerts raised since start (the deque keeps the newest 100).
    alerts_total: int = 0
    # Filled periodically by the daemon (None until first measured).
    store_bytes: int | None = None
    store_budget_bytes: int | None = None
    #: The poller stamps samples only while the wall clock is plausible (gateway.clock.clocks).
    clock_trusted: bool | None = None
    #: The kernel's view: an NTP client (chrony, timesyncd) keeps the clock synchronised.
    clock_synchronized: bool | None = None
    clock: ClockHealth = field(default_factory=ClockHealth)

    def meter(self, meter: str) -> MeterHealth:
        return self.meters.setdefault(meter, MeterHealth(meter))

    def bus(self, bus: str) -> BusHealth:
        return self.buses.setdefault(bus, BusHealth(bus))

    def uplink(self, uplink: str) -> UplinkHealth:
        return self.uplinks.setdefault(uplink, UplinkHealth(uplink))

    def alert(self, source: str, message: str) -> None:
        """Something a human should hear about: logged as an error and published."""
        log.error("%s: %s", source, message)
        self.alerts.append(Alert(int(time.time() * 1000), source, message))
        self.alerts_total += 1
