"""The status page as HTML, rendered on the server from the status document and the chart
history: the page works without script (it then reloads itself), and its script only fetches
`/fragment` every couple of seconds and swaps it in.

Invariants:
- Every text from the document is HTML-escaped; the page carries no inline script or style
  (the Content-Security-Policy forbids both) and loads nothing from another origin.
- Elements tests and people look for carry stable `data-` attributes: `data-meter`,
  `data-uplink`, `data-stream`, `data-field`.
"""

from __future__ import annotations

from html import escape
from typing import Any

from gateway.ops.history import History
from gateway.ops.status_assess import Attention, age_s, duration_text, eta_text
from gateway.ops.status_page.charts import line_chart
from gateway.ops.status_page.numbers import bytes_text, count_text, human, utc_text

#: The page asks for a fresh fragment this often.
REFRESH_MS = 2000
#: Values shown big on a meter's card, first present wins (with their units).
HEADLINE = ("power_active", "energy_active_import", "energy_active_total", "gas_volume")


def page(doc: dict[str, Any], attention: list[Attention], history: History, now_ms: int) -> str:
    gateway_id = escape(str(doc["gateway"]["id"]))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>{gateway_id} · meter-gateway</title>
<link rel="stylesheet" href="static/page.css">
<script src="static/page.js" defer></script>
<noscript><meta http-equiv="refresh" content="{REFRESH_MS // 1000 * 5}"></noscript>
</head><body data-refresh-ms="{REFRESH_MS}">
<main id="status">{fragment(doc, attention, history, now_ms)}</main>
<footer><span id="live" data-field="live">live</span> · read-only ·
<a href="api/status">JSON</a> · <a href="metrics">metrics</a></footer>
</body></html>
"""


def fragment(doc: dict[str, Any], attention: list[Attention], history: History, now_ms: int) -> str:
    """The page's content (what the script swaps in)."""
    parts = [
        _header(doc, attention, now_ms),
        _attention(attention),
        _meters(doc, history, now_ms),
        _uplinks(doc, history, now_ms),
        _site(doc),
        _alerts(doc, now_ms),
    ]
    return "\n".join(parts)


def _ago(ts_ms: int | None, now_ms: int) -> str:
    if ts_ms is None:
        return "never"
    return f"{duration_text(age_s(ts_ms, now_ms))} ago"


def _time(ts_ms: int | None, now_ms: int) -> str:
    """A <time> with the age as text and the UTC time as its title."""
    if ts_ms is None:
        return "<span>never</span>"
    return (
        f'<time datetime="{utc_text(ts_ms)}" title="{utc_text(ts_ms)}">{_ago(ts_ms, now_ms)}</time>'
    )


def _header(doc: dict[str, Any], attention: list[Attention], now_ms: int) -> str:
    gateway = doc["gateway"]
    verdict = (
        '<span class="badge ok" data-field="overall">all well</span>'
        if not attention
        else f'<span class="badge bad" data-field="overall">{len(attention)} need attention</span>'
    )
    return (
        f"<header><h1>{escape(str(gateway['id']))} {verdict}</h1>"
        f'<p class="sub">meter-gateway {escape(str(gateway["version"]))} · up since '
        f"{_time(gateway['started_ms'], now_ms)} · last sample "
        f'<span data-field="last-sample">{_time(gateway["last_sample_ms"], now_ms)}</span>'
        f' · as of <span data-field="as-of">{utc_text(now_ms)}</span></p></header>'
    )


def _attention(attention: list[Attention]) -> str:
    if not attention:
        return ""
    items = "".join(
        f"<li><b>{escape(item.subject)}</b>: {escape(item.message)}</li>" for item in attention
    )
    return (
        '<section class="attention" data-field="attention"><h2>Needs attention</h2>'
        f"<ul>{items}</ul></section>"
    )


def _badge(state: str) -> str:
    css = {"ok": "ok", "degraded": "warn", "offline": "bad"}.get(state, "idle")
    return f'<span class="badge {css}" data-field="state">{escape(state)}</span>'


def _headline(meter: dict[str, Any]) -> str:
    values, units = meter["values"], meter["units"]
    shown = [name for name in HEADLINE if values.get(name) is not None][:2]
    if not shown:
        shown = [name for name, value in values.items() if value is not None][:2]
    return "".join(
        f'<div class="value" data-field="{escape(name)}"><span class="num">'
        f"{escape(human(values[name], units.get(name, '')))}</span>"
        f'<span class="what">{escape(name.replace("_", " "))}</span></div>'
        for name in shown
    )


def _meters(doc: dict[str, Any], history: History, now_ms: int) -> str:
    start = now_ms - history.bucket_ms * history.buckets
    cards = []
    for meter_id, meter in doc["meters"].items():
        power = history.power.get(meter_id)
        counter = history.counter.get(meter_id)
        channel = history.counter_channel.get(meter_id, "energy")
        charts = ""
        if power is not None:
            charts += line_chart(
                power.points(), start_ms=start, end_ms=now_ms, label="power", unit="W", css="power"
            )
        if counter is not None:
            unit = meter["units"].get(channel, "Wh")
            charts += line_chart(
                counter.points(),
                start_ms=start,
                end_ms=now_ms,
                label=channel.replace("_", " "),
                unit=unit,
                css="energy",
            )
        error = ""
        if meter["last_error"]:
            error = (
                f'<p class="error" data-field="last-error">{escape(meter["last_error"])} '
                f"({meter['errors_total']} error(s))</p>"
            )
        where = f" · bus {escape(str(meter['bus']))}" if meter.get("bus") else ""
        every = f" · every {meter['interval_secs']:g} s" if meter.get("interval_secs") else ""
        cards.append(
            f'<article class="card" data-meter="{escape(meter_id)}">'
            f"<h3>{escape(meter_id)} {_badge(meter['state'])}</h3>"
            f'<div class="values">{_headline(meter)}</div>'
            f'<p class="sub">last sample <span data-field="age">'
            f"{_time(meter['last_sample_ms'], now_ms)}</span>{where}{every} · "
            f"{count_text(meter['stored'])} stored</p>{error}{charts}</article>"
        )
    if not cards:
        cards.append('<p class="nodata">no meters configured</p>')
    return f'<section><h2>Meters</h2><div class="grid">{"".join(cards)}</div></section>'


def _eta(eta_s: float | None, backlog: int, oldest_age_s: float | None) -> str:
    return eta_text(eta_s, backlog, oldest_age_s)


def _uplinks(doc: dict[str, Any], history: History, now_ms: int) -> str:
    start = now_ms - history.bucket_ms * history.buckets
    cards = []
    for name, uplink in doc["uplinks"].items():
        streams = uplink["streams"]
        backlog = sum(s["backlog_rows"] for s in streams.values())
        dead = sum(s["dead_letters"] for s in streams.values())
        oldest = [s["oldest_undelivered_ms"] for s in streams.values()]
        known = [ts for ts in oldest if ts is not None]
        etas = [s["eta_s"] for s in streams.values()]
        eta = None if any(e is None for e in etas) else max(etas, default=0.0)
        rows = "".join(
            f'<tr data-stream="{escape(stream)}"><td>{escape(stream)}</td>'
            f"<td>{escape(str(s['meter']))}</td>"
            f'<td class="n" data-field="stream-backlog">{count_text(s["backlog_rows"])}</td>'
            f"<td>{_ago(s['oldest_undelivered_ms'], now_ms) if s['backlog_rows'] else '-'}</td>"
            f'<td class="n">{count_text(s["dead_letters"])}</td>'
            f"<td>{_eta(s['eta_s'], s['backlog_rows'], age_s(s['oldest_undelivered_ms'], now_ms))}"
            "</td></tr>"
            for stream, s in streams.items()
        )
        chart = ""
        if name in history.backlog:
            chart = line_chart(
                history.backlog[name].points(),
                start_ms=start,
                end_ms=now_ms,
                label="backlog",
                unit="samples",
                css="backlog",
            )
        problem = ""
        if uplink["paused_reason"]:
            problem += f'<p class="error">paused: {escape(uplink["paused_reason"])}</p>'
        if uplink["last_error"]:
            problem += (
                f'<p class="error" data-field="last-error">last error '
                f"{_ago(uplink['last_error_ms'], now_ms)}: {escape(uplink['last_error'])}</p>"
            )
        cards.append(
            f'<article class="card" data-uplink="{escape(name)}"><h3>{escape(name)}</h3>'
            f'<div class="values"><div class="value" data-field="backlog"><span class="num">'
            f'{count_text(backlog)}</span><span class="what">waiting</span></div>'
            f'<div class="value" data-field="dead-letters"><span class="num">{count_text(dead)}'
            f'</span><span class="what">dead letters</span></div></div>'
            f'<p class="sub">{_eta(eta, backlog, age_s(min(known), now_ms) if known else None)}'
            " · oldest waiting "
            f"{_ago(min(known), now_ms) if known else '-'} · last success "
            f"{_time(uplink['last_success_ms'], now_ms)} · {count_text(uplink['delivered'])} "
            f"delivered, {count_text(uplink['retries'])} retries</p>{problem}{chart}"
            f"<details><summary>{len(streams)} stream(s)</summary><table><thead><tr>"
            "<th>stream</th><th>meter</th><th>waiting</th><th>oldest</th><th>dead</th>"
            f"<th>ETA</th></tr></thead><tbody>{rows}</tbody></table></details>"
            f"{_pts(uplink.get('facts', {}))}</article>"
        )
    if not cards:
        cards.append('<p class="nodata">no uplinks configured</p>')
    return f'<section><h2>Uplinks</h2><div class="grid">{"".join(cards)}</div></section>'


def _pts(facts: dict[str, Any]) -> str:
    """PTS: per system its window, state, chosen reading and quota (gateway.uplinks.pts.status)."""
    systems = facts.get("systems")
    if not isinstance(systems, dict) or not systems:
        return ""
    rows = []
    for system, info in systems.items():
        if not isinstance(info, dict):
            continue
        window = info.get("window") or {}
        reading = info.get("reading") or {}
        quota = info.get("quota") or {}
        reading_text = (
            f"{reading.get('MeterValue', reading.get('value', '-'))} at "
            f"{reading.get('MeterDate', reading.get('ts', '-'))}"
            if reading
            else "none yet"
        )
        quota_text = ", ".join(
            f"{key} {value}" for key, value in quota.items() if not isinstance(value, dict)
        )
        rows.append(
            f'<tr data-pts-system="{escape(str(system))}"><td>{escape(str(system))}</td>'
            f"<td>{escape(str(info.get('period', '-')))}: {escape(str(window.get('open', '-')))}"
            f" – {escape(str(window.get('close', '-')))}</td>"
            f"<td>{escape(str(info.get('state', '-')))}</td><td>{escape(reading_text)}</td>"
            f"<td>{escape(quota_text or '-')}</td></tr>"
        )
    return (
        '<table class="pts"><thead><tr><th>system</th><th>window</th><th>state</th>'
        f"<th>reading</th><th>quota</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _site(doc: dict[str, Any]) -> str:
    store, clock, mqtt = doc["store"], doc["clock"], doc["mqtt"]
    used, budget = store["bytes"], store["budget_bytes"]
    bar = ""
    if used is not None and budget:
        bar = f'<meter min="0" max="{budget}" high="{int(0.9 * budget)}" value="{used}"></meter>'
    clock_text = {True: "trusted", False: "NOT trusted (readings held)", None: "-"}[
        clock["trusted"]
    ]
    sync = {True: "synchronised", False: "not synchronised", None: "unknown"}[clock["synchronized"]]
    mqtt_text = "not configured"
    if mqtt["configured"]:
        state = {True: "connected", False: "NOT connected", None: "-"}[mqtt["connected"]]
        mqtt_text = f"{state} to {escape(str(mqtt['broker']))}"
    buses = "".join(
        f'<li data-bus="{escape(name)}">{escape(name)}: {escape(bus["state"])}, '
        f"{count_text(bus['requests'])} requests, {count_text(bus['errors_total'])} errors</li>"
        for name, bus in doc["buses"].items()
    )
    return (
        '<section><h2>Site</h2><div class="grid"><article class="card" data-field="store">'
        f"<h3>Store</h3><p>{bytes_text(used)} of {bytes_text(budget)}"
        f"{' · FULL: refusing samples' if store['full'] else ''}</p>{bar}</article>"
        f'<article class="card"><h3>Clock</h3><p>{clock_text}; kernel: {sync}</p></article>'
        f'<article class="card"><h3>MQTT</h3><p>{mqtt_text}</p></article>'
        + (f'<article class="card"><h3>Buses</h3><ul>{buses}</ul></article>' if buses else "")
        + "</div></section>"
    )


def _alerts(doc: dict[str, Any], now_ms: int) -> str:
    alerts = doc["alerts"]
    if not alerts:
        return '<section><h2>Alerts</h2><p class="nodata">none since start</p></section>'
    items = "".join(
        f'<li><span class="when">{_time(a["ts_ms"], now_ms)}</span> '
        f"<b>{escape(a['source'])}</b>: {escape(a['message'])}</li>"
        for a in alerts
    )
    return (
        f"<section><h2>Alerts <small>newest first, {doc['alerts_total']} since start</small>"
        f'</h2><ul class="alerts" data-field="alerts">{items}</ul></section>'
    )
