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

log = logging.getLogger(__name__)


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
    last_values: dict[str, float] = field(default_factory=dict)


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
    store_full: bool = False
    alerts: deque[Alert] = field(default_factory=lambda: deque(maxlen=100))

    def meter(self, meter: str) -> MeterHealth:
        return self.meters.setdefault(meter, MeterHealth(meter))

    def uplink(self, uplink: str) -> UplinkHealth:
        return self.uplinks.setdefault(uplink, UplinkHealth(uplink))

    def alert(self, source: str, message: str) -> None:
        """Something a human should hear about: logged as an error and published."""
        log.error("%s: %s", source, message)
        self.alerts.append(Alert(int(time.time() * 1000), source, message))
