"""What the Wattics uplink tracks of one datapoint's stream, the uplink-state keys it commits
with the cursor, and how it reads Wattics' answers and its own stored packets.

Invariants: positions only move forward (`acked` never passes a set-aside `suspect`); what is
committed with the cursor (continuity, last boundary) describes the acknowledged position,
never one ahead of it; the last accepted packet time is a fact about Wattics and may be
committed as soon as it is known.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from core.backoff import Backoff
from core.sample import StoredSample
from gateway.net.policy import is_web_page
from gateway.timefmt import parse_iso8601_ms
from gateway.uplinks.delivery import Refused, StreamProgress
from gateway.uplinks.wattics.config import WatticsDatapointConfig
from gateway.uplinks.wattics.continuity import CounterContinuity
from gateway.uplinks.wattics.interval import IntervalPicker


@dataclass(kw_only=True)
class WatticsStream(StreamProgress):
    point: WatticsDatapointConfig
    picker: IntervalPicker[StoredSample] | None = None
    #: Last row read from the store (may run ahead of `acked` while a sample is pending).
    read_pos: int = 0
    acked: int = 0
    committed: int = 0
    uncommitted: int = 0
    #: Packets stamped at or before this (Wattics' last processed one) are not sent again.
    skip_until_ms: int | None = None
    resync_skipped: int = 0
    #: Lifetime counters kept continuous across meter swaps (committed with the cursor).
    continuity: CounterContinuity = field(default_factory=CounterContinuity)
    #: The stamp of the packet being sent (for "did it arrive?" after a lost answer).
    sending_ts_ms: int | None = None
    #: The last boundary decided for an acknowledged position (committed with the cursor).
    boundary_ms: int | None = None
    #: The stamp of the last packet Wattics accepted (or had, per resync), committed too.
    accepted_ts_ms: int | None = None
    #: A packet refused as malformed, set aside until a later one is accepted (then parked).
    suspect: Suspect | None = None
    #: Acknowledged positions after the suspect, applied once it is resolved.
    deferred_ack: int = 0
    #: Why Wattics refuses this datapoint (404, 403, every packet 400): it is paused.
    paused_reason: str | None = None
    pause_backoff: Backoff | None = None
    #: The store's requeue generation when this stream last looked for re-queued letters.
    requeue_seen: int | None = None


@dataclass(frozen=True, slots=True)
class Suspect:
    stored: StoredSample
    body: bytes
    ts_ms: int
    refused: Refused


def continuity_key(stream: str) -> str:
    return f"continuity:{stream}"


def boundary_key(stream: str) -> str:
    return f"boundary:{stream}"


def accepted_key(stream: str) -> str:
    """The uplink-state key of a stream's last accepted packet time (epoch ms)."""
    return f"accepted:{stream}"


def not_a_wattics_answer(content_type: str, body: bytes) -> str | None:
    """Why a 2xx cannot be Wattics' acknowledgement (None: it may be). The document names
    no body; an HTML page (a captive portal, a proxy's login or error page) is not one."""
    if is_web_page(content_type, body) or body.lstrip()[:5].lower() == b"<?xml":
        return f"answer is a web page ({content_type or 'no content type'}), not Wattics"
    return None


def packet_time_ms(payload: str) -> int | None:
    """The instant of a stored packet's `tsISO8601` (None when unreadable)."""
    try:
        stamp = json.loads(payload).get("tsISO8601")
        return parse_iso8601_ms(stamp) if isinstance(stamp, str) else None
    except (ValueError, AttributeError, RecursionError):
        return None


def committed_state(st: WatticsStream, *, counter_continuity: bool) -> dict[str, str] | None:
    """What to commit with the cursor: counter continuity, the last boundary decided and the
    last accepted packet time (None: nothing to keep)."""
    state: dict[str, str] = {}
    if counter_continuity and st.continuity.last:
        state[continuity_key(st.stream)] = st.continuity.dump()
    if st.picker is not None and st.boundary_ms is not None:
        state[boundary_key(st.stream)] = str(st.boundary_ms)
    if st.accepted_ts_ms is not None:
        state[accepted_key(st.stream)] = str(st.accepted_ts_ms)
    return state or None
