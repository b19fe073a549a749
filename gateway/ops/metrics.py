"""Prometheus metrics for `/metrics`, written with prometheus_client from the status document
(gateway.ops.status_facts) at scrape time: nothing in the data path counts for Prometheus.

Names follow Prometheus' conventions: the `meter_gateway_` prefix, base units in the name
(`_seconds`, `_bytes`, `_watts`, `_watt_hours`), `_total` for counters; meters, buses,
uplinks and streams are labels. Counters count since the daemon started (Prometheus handles
the reset at a restart). docs/status-page.md lists every metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.health import MeterState

PREFIX = "meter_gateway"
#: A channel's unit (core.channels) -> the Prometheus unit suffix of its gauge.
UNIT_SUFFIX = {
    "W": "watts",
    "var": "volt_amperes_reactive",
    "VA": "volt_amperes",
    "V": "volts",
    "A": "amperes",
    "Hz": "hertz",
    "Wh": "watt_hours",
    "varh": "volt_ampere_reactive_hours",
    "m3": "cubic_meters",
    "": "ratio",
}
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _seconds(ts_ms: int | None) -> float | None:
    return None if ts_ms is None else ts_ms / 1000


def _bool(value: bool | None) -> float | None:
    return None if value is None else float(value)


class StatusCollector(Collector):
    """Turns the status document into metric families at every scrape."""

    def __init__(
        self, facts: Callable[[], dict[str, Any]], attention: Callable[[], int] | None = None
    ) -> None:
        self._facts = facts
        self._attention = attention

    def collect(self) -> Iterator[Metric]:
        doc = self._facts()
        yield from _gateway(doc, self._attention)
        yield from _meters(doc["meters"])
        yield from _buses(doc["buses"])
        yield from _uplinks(doc["uplinks"], doc["meters"])


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)


def _gateway(doc: dict[str, Any], attention: Callable[[], int] | None) -> Iterator[Metric]:
    gateway, store, clock, mqtt = doc["gateway"], doc["store"], doc["clock"], doc["mqtt"]
    info = _gauge("build_info", "Always 1: the gateway's id and version", ["gateway", "version"])
    info.add_metric([gateway["id"], gateway["version"]], 1)
    yield info
    plain: list[tuple[str, str, float | None]] = [
        (
            "start_time_seconds",
            "When the daemon started, Unix time",
            _seconds(gateway["started_ms"]),
        ),
        (
            "last_sample_timestamp_seconds",
            "The newest stored sample of any meter, Unix time",
            _seconds(gateway["last_sample_ms"]),
        ),
        ("store_bytes", "Bytes the store uses (counted against its budget)", store["bytes"]),
        ("store_budget_bytes", "The store's disk budget", store["budget_bytes"]),
        ("store_full", "1 while the store refuses new samples", _bool(store["full"])),
        ("clock_trusted", "1 while the wall clock may stamp samples", _bool(clock["trusted"])),
        (
            "clock_synchronized",
            "1 while the kernel says an NTP client keeps the clock synchronised",
            _bool(clock["synchronized"]),
        ),
        ("clock_held_readings", "Readings held until the clock is trusted", clock["held"]),
    ]
    if mqtt["configured"]:
        plain.append(
            ("mqtt_connected", "1 while connected to the MQTT broker", _bool(mqtt["connected"]))
        )
    if attention is not None:
        plain.append(("attention_items", "Things that need a human now", attention()))
    for name, text, value in plain:
        if value is not None:
            family = _gauge(name, text)
            family.add_metric([], value)
            yield family
    steps = CounterMetricFamily(f"{PREFIX}_clock_steps", "Wall-clock steps seen while polling")
    steps.add_metric([], clock["steps"])
    yield steps
    alerts = CounterMetricFamily(f"{PREFIX}_alerts", "Alerts raised (also on MQTT `alerts`)")
    alerts.add_metric([], doc["alerts_total"])
    yield alerts


def _meters(meters: dict[str, Any]) -> Iterator[Metric]:
    stored = _counter("samples_stored", "Samples stored, per meter", ["meter"])
    reads = _counter("meter_reads", "Successful reads, per meter", ["meter"])
    errors = _counter("meter_read_errors", "Failed reads, per meter and kind", ["meter", "kind"])
    skipped = _counter("meter_skipped_ticks", "Poll ticks skipped by overrunning reads", ["meter"])
    state = _gauge("meter_state", "1 for the meter's current state", ["meter", "state"])
    newest = _gauge(
        "meter_last_sample_timestamp_seconds", "The meter's newest stored sample", ["meter"]
    )
    values: dict[str, GaugeMetricFamily] = {}
    for meter_id, meter in meters.items():
        stored.add_metric([meter_id], meter["stored"])
        reads.add_metric([meter_id], meter["reads"])
        skipped.add_metric([meter_id], meter["skipped_ticks"])
        for kind, count in sorted(meter["errors"].items()):
            errors.add_metric([meter_id, kind], count)
        for name in MeterState:
            state.add_metric([meter_id, str(name)], float(meter["state"] == str(name)))
        if meter["last_sample_ms"] is not None:
            newest.add_metric([meter_id], meter["last_sample_ms"] / 1000)
        for channel, value in meter["values"].items():
            unit = meter["units"].get(channel)
            if value is None or unit not in UNIT_SUFFIX:
                continue
            family = values.get(channel)
            if family is None:
                family = values[channel] = _gauge(
                    f"{channel}_{UNIT_SUFFIX[unit]}",
                    f"The meter's last {channel} reading ({unit or 'ratio'})",
                    ["meter"],
                )
            family.add_metric([meter_id], value)
    yield from (stored, reads, errors, skipped, state, newest)
    yield from (values[name] for name in sorted(values))


def _buses(buses: dict[str, Any]) -> Iterator[Metric]:
    requests = _counter("bus_requests", "Requests sent on the bus, answered or not", ["bus"])
    errors = _counter("bus_errors", "Failed requests and connects, per kind", ["bus", "kind"])
    busy = _counter("bus_busy_seconds", "Time the line spent in requests", ["bus"])
    reconnects = _counter("bus_reconnects", "Times the port/connection was reopened", ["bus"])
    up = _gauge("bus_up", "1 while the port is open / the endpoint connected", ["bus"])
    for name, bus in buses.items():
        requests.add_metric([name], bus["requests"])
        busy.add_metric([name], bus["busy_s"])
        reconnects.add_metric([name], bus["reconnects"])
        up.add_metric([name], float(bus["state"] == "ok"))
        for kind, count in sorted(bus["errors"].items()):
            errors.add_metric([name, kind], count)
    yield from (requests, errors, busy, reconnects, up)


def _uplinks(uplinks: dict[str, Any], meters: dict[str, Any]) -> Iterator[Metric]:
    labels = ["uplink"]
    delivered = _counter(
        "uplink_deliveries", "Items the service acknowledged (packets, hours, readings)", labels
    )
    retries = _counter("uplink_retries", "Requests that failed and were sent again", labels)
    parked = _counter("uplink_parked", "Items parked in the dead-letter table", labels)
    paused = _gauge("uplink_paused", "1 while delivery is paused (credentials refused)", labels)
    success = _gauge(
        "uplink_last_success_timestamp_seconds", "The last acknowledged request", labels
    )
    stream_labels = ["uplink", "stream", "meter"]
    passed = _counter(
        "stream_samples_delivered", "Samples the stream's cursor moved past", stream_labels
    )
    backlog = _gauge("stream_backlog_samples", "Samples waiting to be delivered", stream_labels)
    oldest = _gauge(
        "stream_oldest_undelivered_timestamp_seconds",
        "The oldest sample waiting (age = time() - this)",
        stream_labels,
    )
    age = _gauge(
        "stream_oldest_undelivered_age_seconds", "Age of the oldest sample waiting", stream_labels
    )
    dead = _gauge("stream_dead_letters", "Items parked and not re-queued", stream_labels)
    now_s = time.time()
    for name, uplink in uplinks.items():
        delivered.add_metric([name], uplink["delivered"])
        retries.add_metric([name], uplink["retries"])
        parked.add_metric([name], uplink["parked"])
        paused.add_metric([name], float(bool(uplink["paused_reason"])))
        if uplink["last_success_ms"] is not None:
            success.add_metric([name], uplink["last_success_ms"] / 1000)
        for stream, figures in uplink["streams"].items():
            key = [name, stream, figures["meter"]]
            passed.add_metric(key, figures["passed"])
            backlog.add_metric(key, figures["backlog_rows"])
            dead.add_metric(key, figures["dead_letters"])
            if figures["oldest_undelivered_ms"] is not None:
                ts_s = figures["oldest_undelivered_ms"] / 1000
                oldest.add_metric(key, ts_s)
                age.add_metric(key, max(0.0, now_s - ts_s))
    yield from (delivered, retries, parked, paused, success, passed, backlog, oldest, age, dead)


def exposition(collector: StatusCollector) -> bytes:
    """The text exposition format of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
