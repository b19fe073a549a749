"""Commands an operator sends over MQTT, and the JSON outcome each one answers.

Topics are relative to `<prefix>/<gateway id>/cmd/`; the answer goes to the same topic plus
`/result` (not retained, QoS 1):

- `meters/<id>/read`    read the meter now and store the sample (config `commands.read`),
                        unless it would take the place of the scheduled sample still due
                        (`stored: false`; the poller's `displaces`)
- `uplinks/<name>/flush` retry now: wake an uplink waiting in backoff (config `commands.flush`)
- `pts/submit`          the PTS monthly submission, a dry run unless `{"dry_run": false}`
                        (config `commands.pts_submit`)

Invariants:
- Every command is refused (`command disabled`) unless enabled in config; the broker's ACL must
  still restrict who may publish to `cmd/` (docs/mqtt.md, "Commands").
- Every answer is a JSON object with `ok` (bool) and, when the command carried one, the same
  `request_id`; a refusal or failure carries `error`. A command never raises: a bug in one
  becomes `{"ok": false, "error": "internal error"}` and a logged traceback.
- The payload is optional: empty, or a JSON object (`request_id`, `dry_run`) of at most
  MAX_PAYLOAD_BYTES. A `request_id` is echoed only when small (MAX_REQUEST_ID_CHARS, or an
  integer below 2^53); topic parts are quoted cut to MAX_SHOWN_CHARS. So no answer or log line
  grows with what a publisher sends.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Protocol, runtime_checkable

from core.health import Health
from core.sample import Sample
from drivers.config import MeterConfig
from gateway.config.schema import MqttCommandsConfig
from gateway.store.async_store import AsyncStore
from gateway.store.database import StoreFull
from gateway.timefmt import utc_iso8601_ms

log = logging.getLogger(__name__)

RESULT: Final = "result"
#: The uplink name a PTS uplink registers under.
PTS_UPLINK: Final = "pts"

ReadOnce = Callable[[MeterConfig], Awaitable[Sample | None]]
Outcome = dict[str, Any]


@runtime_checkable
class Flushable(Protocol):
    """An uplink that can cut its retry backoff short ("retry now")."""

    def flush(self) -> object: ...


@runtime_checkable
class PtsSubmitter(Protocol):
    """What the PTS uplink offers the `pts/submit` command."""

    async def submit(self, *, dry_run: bool) -> Mapping[str, Any]: ...


class CommandError(Exception):
    """A command refused or failed for a reason the operator should read."""


#: Command fields are small: a payload larger than this is refused unread.
MAX_PAYLOAD_BYTES: Final = 4096
#: A `request_id` is echoed back: a string of at most this many characters, or an integer
#: JSON consumers read exactly (|n| < 2**53). Anything else is refused and not echoed.
MAX_REQUEST_ID_CHARS: Final = 128
MAX_REQUEST_ID_INT: Final = 2**53
#: A topic part (meter id, uplink name) is quoted in errors and logs up to this length.
MAX_SHOWN_CHARS: Final = 64


def shown(text: str) -> str:
    """`text` as an answer or log line quotes it: cut to MAX_SHOWN_CHARS."""
    return (
        text if len(text) <= MAX_SHOWN_CHARS else f"{text[:MAX_SHOWN_CHARS]}… ({len(text)} chars)"
    )


def parse_payload(payload: bytes) -> dict[str, Any]:
    """The command's arguments: empty means none; otherwise one JSON object."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandError(f"payload too large: at most {MAX_PAYLOAD_BYTES} bytes")
    if not payload.strip():
        return {}
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CommandError("payload must be empty or a JSON object") from exc
    if not isinstance(data, dict):
        raise CommandError("payload must be empty or a JSON object")
    return data


def _request_id(data: Mapping[str, Any]) -> str | int | None:
    """The request_id to echo; CommandError (nothing echoed) when it is not a small one."""
    value = data.get("request_id")
    if value is None:
        return None
    if isinstance(value, str) and len(value) <= MAX_REQUEST_ID_CHARS:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < MAX_REQUEST_ID_INT:
        return value
    raise CommandError(
        f"request_id must be a string of at most {MAX_REQUEST_ID_CHARS} characters "
        "or an integer below 2^53"
    )


class CommandHandler:
    """Routes `cmd/...` topics to the poller, the store and the uplinks."""

    def __init__(
        self,
        config: MqttCommandsConfig,
        *,
        health: Health,
        meters: Sequence[MeterConfig] = (),
        read_once: ReadOnce | None = None,
        displaces: Callable[[Sample], bool] | None = None,
        store: AsyncStore | None = None,
        uplinks: Mapping[str, object] | None = None,
        clock_trusted: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        #: Like the poller, never stamp a sample while the wall clock is implausible.
        self.clock_trusted = clock_trusted
        self.health = health
        self.meters = {meter.id: meter for meter in meters}
        self.read_once = read_once
        #: Whether storing a read would take a scheduled sample's place (the poller's view).
        self.displaces = displaces
        self.store = store
        self.uplinks = dict(uplinks or {})

    @staticmethod
    def is_result(suffix: str) -> bool:
        """Our own answers come back on the cmd/# subscription: they are not commands."""
        return suffix == RESULT or suffix.endswith("/" + RESULT)

    @staticmethod
    def refusal(payload: bytes, error: str) -> Outcome:
        """An answer refusing the command without running it (e.g. too many running)."""
        try:
            request_id = _request_id(parse_payload(payload))
        except CommandError:
            request_id = None
        outcome: Outcome = {"ok": False, "error": error}
        return outcome if request_id is None else {"request_id": request_id, **outcome}

    async def handle(self, suffix: str, payload: bytes) -> Outcome:
        """Run the command at `cmd/<suffix>`; the outcome to publish on `cmd/<suffix>/result`."""
        request_id: str | int | None = None
        try:
            data = parse_payload(payload)
            request_id = _request_id(data)
            outcome = await self._dispatch(suffix.split("/"), data)
        except CommandError as exc:
            outcome = {"ok": False, "error": str(exc)}
        except Exception:  # a command must answer whatever happens; the traceback is logged
            log.exception("MQTT command %s failed", shown(suffix))
            outcome = {"ok": False, "error": "internal error"}
        log.info(
            "MQTT command %s: %s",
            shown(suffix),
            "ok" if outcome.get("ok") else outcome.get("error"),
        )
        if request_id is not None:
            outcome = {"request_id": request_id, **outcome}
        return outcome

    async def _dispatch(self, parts: list[str], data: Mapping[str, Any]) -> Outcome:
        match parts:
            case ["meters", meter_id, "read"]:
                self._enabled(self.config.read)
                return await self._read(meter_id)
            case ["uplinks", name, "flush"]:
                self._enabled(self.config.flush)
                return await self._flush(name)
            case ["pts", "submit"]:
                self._enabled(self.config.pts_submit)
                return await self._pts_submit(data)
        raise CommandError("unknown command")

    @staticmethod
    def _enabled(flag: bool) -> None:
        if not flag:
            raise CommandError("command disabled")

    async def _read(self, meter_id: str) -> Outcome:
        meter = self.meters.get(meter_id)
        if meter is None or self.read_once is None or self.store is None:
            raise CommandError(f"unknown meter {shown(meter_id)!r}")
        if self.clock_trusted is not None and not self.clock_trusted():
            raise CommandError("the system clock is not trusted yet: no sample can be stamped")
        sample = await self.read_once(meter)
        if sample is None:
            error = self.health.meter(meter_id).last_error or "read failed"
            raise CommandError(f"read failed: {error}")
        outcome: Outcome = {
            "meter": meter_id,
            "ts": utc_iso8601_ms(sample.ts_ms),
            "values": dict(sample.values),
        }
        if self.displaces is not None and self.displaces(sample):
            return {
                "ok": True,
                "stored": False,
                "note": "not stored: the meter's scheduled sample is due; it is stored instead",
                **outcome,
            }
        try:
            ids = await self.store.append([sample])
        except StoreFull as exc:
            return {"ok": False, "error": f"not stored: {exc}", **outcome}
        if ids[0] is None:
            self.health.meter(meter_id).refused_older += 1
            return {
                "ok": False,
                "error": "not stored: not newer than the meter's last stored sample",
                **outcome,
            }
        return {"ok": True, "stored": True, **outcome}

    async def _flush(self, name: str) -> Outcome:
        uplink = self.uplinks.get(name)
        if uplink is None:
            raise CommandError(f"unknown uplink {shown(name)!r}")
        if not isinstance(uplink, Flushable):
            raise CommandError(f"uplink {shown(name)!r} cannot be flushed")
        done = uplink.flush()
        if inspect.isawaitable(done):
            await done
        health = self.health.uplinks.get(name)
        return {
            "ok": True,
            "uplink": name,
            "backlog_rows": None if health is None else health.backlog_rows,
            "paused_reason": None if health is None else health.paused_reason,
        }

    async def _pts_submit(self, data: Mapping[str, Any]) -> Outcome:
        dry_run = data.get("dry_run", True)
        if not isinstance(dry_run, bool):
            raise CommandError("dry_run must be true or false")
        uplink = self.uplinks.get(PTS_UPLINK)
        if uplink is None or not isinstance(uplink, PtsSubmitter):
            raise CommandError("pts uplink not configured")
        answer = dict(await uplink.submit(dry_run=dry_run))
        return {"ok": bool(answer.pop("ok", True)), "dry_run": dry_run, **answer}
