"""How every uplink reacts to a cloud's answer: one table, one place.

Outcomes (Vector's retry logic, Home Assistant's error split):
- OK      2xx: delivered, the cursor may move past the item.
- RETRY   network errors, timeouts, 408, 425, 429, 5xx, and anything we do not understand (1xx,
          3xx: a redirect is never followed, its detail names the target): "try later". The
          SAME item is sent again after a capped, jittered backoff that honours Retry-After;
          data is never dropped for a transient or unclear failure.
- AUTH    401, 403: "a human must act". The uplink pauses as a whole, alerts once, keeps all
          data and probes on a slow schedule.
- REJECT  any other 4xx: "failed for good" for this one item. Retried a bounded number of times
          (a proxy may have mangled it), then parked in the dead-letter table, and the stream
          moves on.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum

import aiohttp
import yarl


class Outcome(StrEnum):
    OK = "ok"
    RETRY = "retry"
    AUTH = "auth"
    REJECT = "reject"


#: Exceptions that mean "the request did not get a usable answer": always RETRY.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError, OSError)

_RETRY_4XX = frozenset({408, 425, 429})
_AUTH = frozenset({401, 403})


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do about one attempt. `detail` is for logs and health; it never holds secrets.

    `maybe_arrived`: no answer came, yet the request may have reached the service and been
    processed (the one place this is decided: `may_have_arrived`). A client must not count
    such a request as lost: Wattics asks for its last packet, EnerKey counts the ambiguous
    retry, PTS asks GetSubmissionStatus before spending quota again.
    """

    outcome: Outcome
    status: int | None = None
    retry_after_secs: float | None = None
    detail: str = ""
    maybe_arrived: bool = False


def classify_status(status: int) -> Outcome:
    """The table. Unknown classes (1xx, 3xx: redirects are not followed) are RETRY, not loss."""
    if 200 <= status < 300:
        return Outcome.OK
    if status in _AUTH:
        return Outcome.AUTH
    if status in _RETRY_4XX or status >= 500:
        return Outcome.RETRY
    if 400 <= status < 500:
        return Outcome.REJECT
    return Outcome.RETRY


def classify_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes | str = b"",
    *,
    now: float | None = None,
    json_retry_after_key: str | None = None,
) -> Verdict:
    """Verdict for an HTTP answer; Retry-After (header, or a JSON body field) rides along.

    `json_retry_after_key` (e.g. "retryAfter" for MTS) is looked up in a JSON body when the
    header is absent; `now` (epoch seconds) anchors an HTTP-date Retry-After.
    """
    outcome = classify_status(status)
    retry_after = None
    if outcome is not Outcome.OK:
        retry_after = parse_retry_after(headers.get("Retry-After"), now=now)
        if retry_after is None and json_retry_after_key:
            retry_after = retry_after_from_json(body, json_retry_after_key)
    target = redirect_target(status, headers)
    if target is not None:
        return Verdict(outcome, status, retry_after, f"HTTP {status}: {target}")
    return Verdict(outcome, status, retry_after, f"HTTP {status}{_snippet(body)}")


def redirect_target(status: int, headers: Mapping[str, str]) -> str | None:
    """For a 3xx: "redirect to <where> not followed", where is the Location without its query
    or user part (they may hold a secret); None for any other answer. No client follows a
    redirect: credentials would go to whatever host it names (gateway.net.session)."""
    if not 300 <= status < 400:
        return None
    location = headers.get("Location")
    if not location:
        return "redirect without a Location, not followed"
    try:
        url = yarl.URL(location)
        where = str(url.with_user(None).with_password(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        where = "an unreadable Location"
    return f"redirect to {where[:200]} not followed"


#: REJECT answers that mean "nothing by that name here": a wrong path or object id, which a
#: human configured. An uplink whose paths are not published (EnerKey) may treat these as
#: "a human must act" for that stream (pause, alert, keep the data) instead of parking.
MISDIRECTED = frozenset({404, 405})


def is_misdirected(verdict: Verdict) -> bool:
    """True for a REJECT whose status says the request went to the wrong place."""
    return verdict.outcome is Outcome.REJECT and verdict.status in MISDIRECTED


#: Exceptions after which the service may have processed a request though no answer came:
#: the request was (or may have been) sent, the answer was lost.
_MAYBE_ARRIVED: tuple[type[BaseException], ...] = (
    TimeoutError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientOSError,
)


def may_have_arrived(exc: BaseException) -> bool:
    """True when a request that raised `exc` may have reached the service anyway."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return False  # the connection was never made: nothing was sent
    return isinstance(exc, _MAYBE_ARRIVED)


def classify_exception(exc: BaseException) -> Verdict:
    """Verdict for a request that raised one of TRANSPORT_ERRORS (no answer at all)."""
    if not isinstance(exc, TRANSPORT_ERRORS):
        raise TypeError(f"not a transport error: {type(exc).__name__}") from exc
    text = str(exc) or "no details"
    if isinstance(exc, TimeoutError):
        text = "timed out"
    detail = f"{type(exc).__name__}: {text}"[:300]
    return Verdict(Outcome.RETRY, None, None, detail, maybe_arrived=may_have_arrived(exc))


def _snippet(body: bytes | str, limit: int = 200) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return f": {text[:limit]}" if text else ""


# -- server hints -------------------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date (RFC 9110).

    Lenient about fractions ("0.5"); None when absent or unparseable; never negative.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 850 / asctime forms are GMT
        return None
    reference = time.time() if now is None else now
    return max(0.0, when.timestamp() - reference)


def retry_after_from_json(body: bytes | str | object, key: str = "retryAfter") -> float | None:
    """Seconds from a JSON body field such as MTS's `retryAfter` (top level or one level down)."""
    data: object = body
    if isinstance(body, bytes | str):
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # nested beyond the parser's depth: no value
            return None
    candidates: list[object] = []
    if isinstance(data, dict):
        candidates.append(data.get(key))
        candidates.extend(v.get(key) for v in data.values() if isinstance(v, dict))
    for candidate in candidates:
        if isinstance(candidate, bool):
            continue
        if isinstance(candidate, int | float | str):
            try:
                seconds = float(candidate)
            except ValueError:
                continue
            if math.isfinite(seconds):
                return max(0.0, seconds)
    return None


# -- answer shapes ------------------------------------------------------------------------------

#: Content types that no API answers with: a captive portal's or a proxy's page.
PAGE_TYPES = ("text/html", "application/xhtml+xml")


def is_web_page(content_type: str, body: bytes) -> bool:
    """A 2xx that is a web page (a captive portal, a proxy's login or error page), not an API's
    answer: the request did not reach the service, so it is retried (counted)."""
    head = body.lstrip()[:64].lower()
    return content_type.lower() in PAGE_TYPES or head.startswith((b"<!doctype", b"<html"))


def not_json(content_type: str, body: bytes) -> str | None:
    """Why a 2xx is not a JSON API answer (None: it is one)."""
    kind = content_type.lower()
    if kind != "application/json" and not kind.endswith("+json"):
        return f"answer is {kind or 'without a content type'}, not JSON"
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return "answer is not valid JSON"
    return None


def rate_limit_remaining(headers: Mapping[str, str], name: str = "X-Rate-Limit") -> int | None:
    """Requests left according to a rate-limit header (EnerKey's X-Rate-Limit), if it says."""
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(value.strip().split(",")[0].split("/")[0])
    except ValueError:
        return None
