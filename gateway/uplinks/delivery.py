"""The one delivery core of stream uplinks (Wattics, EnerKey): their lifecycle, their
supervision and shutdown, `flush`, and the one retry loop that applies gateway.net.policy.

A stream uplink delivers each configured stream (a datapoint, a meter) from its own cursor,
in order, concurrently with the others over one kept-alive HTTP session. What it sends and
how it records a delivery is its own; how it waits, retries, pauses and stops is this class's.

Invariants (kept for every stream uplink):
1. One named task per stream in one TaskGroup. A bug or a store error in one stream restarts
   that stream from its cursor after a backoff (`restart_on_error`), never the daemon.
2. Shutdown: streams stop taking work; those waiting (idle, backoff, pause) are cancelled at
   once; one with a request in flight (`in_request`) may finish for `shutdown_grace_secs`, so
   an answer the service gave is recorded and not sent again next start; then the HTTP
   session is closed.
3. `settle` sends the SAME request until the service answers 2xx: RETRY (network, timeout,
   5xx, 429) waits a capped, jittered backoff that honours Retry-After; AUTH (401/403) hands
   over to the uplink's credentials handling (`credentials_refused`: pause, alert, probe);
   REJECT (another 4xx) is retried `max_attempts_rejected` times, then raised as `Refused`
   for the uplink to park. A request that got no answer but may have arrived
   (`Verdict.maybe_arrived`) is first offered to `arrived_anyway`.
4. A stream logs once when delivery starts failing and once when it recovers; the attempts
   in between are counted in health (`retries`, `last_error`), never logged one by one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Self, TypedDict, TypeVar, Unpack

import aiohttp
import yarl

from core.backoff import Backoff
from core.health import Health, UplinkHealth
from gateway.clock.clocks import Clock, SystemClock
from gateway.clock.wakeable import WakeableClock
from gateway.net.auth_gate import AuthGate
from gateway.net.policy import (
    TRANSPORT_ERRORS,
    Outcome,
    Verdict,
    classify_exception,
    classify_response,
    classify_status,
)
from gateway.net.session import KeptSession, SessionFactory, read_limited
from gateway.store.async_store import AsyncStore
from gateway.timefmt import zone
from gateway.uplinks.base import StreamUplinkConfig

log = logging.getLogger(__name__)


@dataclass
class StreamProgress:
    """What the core tracks of one stream; uplinks extend it with their own positions."""

    stream: str
    meter: str
    #: A request is in flight (or its answer is being recorded): shutdown waits for it.
    in_request: bool = False
    failing_since: str | None = None
    failures: int = 0


@dataclass(frozen=True, slots=True)
class Attempt:
    """One request's verdict and the answer body (cut to MAX_ANSWER_BYTES)."""

    verdict: Verdict
    answer: bytes = b""


class Refused(Exception):
    """Refused `attempts` times as malformed (REJECT): the uplink parks the item."""

    def __init__(self, verdict: Verdict, answer: bytes, attempts: int) -> None:
        super().__init__(verdict.detail)
        self.verdict = verdict
        self.answer = answer
        self.attempts = attempts


class DeliveryOptions(TypedDict, total=False):
    """What tests (and the benchmark) may inject into any stream uplink."""

    session_factory: SessionFactory | None
    clock: Clock | None
    rng: Callable[[], float]


C = TypeVar("C", bound=StreamUplinkConfig)
S = TypeVar("S", bound=StreamProgress)


class StreamUplink(ABC, Generic[C, S]):
    """Base of stream uplinks; see the module invariants."""

    def __init__(
        self,
        config: C,
        *,
        name: str,
        store: AsyncStore,
        health: Health,
        timezone: str = "UTC",
        **options: Unpack[DeliveryOptions],
    ) -> None:
        self.name = name
        self.config = config
        self._astore = store
        self._health = health
        self._uplink_health: UplinkHealth = health.uplink(name)
        self._site_tz = zone(timezone)
        # Waits on this clock end early on flush() (retry now).
        self._clock = WakeableClock(options.get("clock") or SystemClock())
        self._rng = options.get("rng", random.random)
        self._sessions = KeptSession(
            config.timeout_secs,
            max_connections=config.max_concurrency,
            factory=options.get("session_factory"),
        )
        self._semaphore = asyncio.Semaphore(config.max_concurrency)
        self._gate = AuthGate()
        self._stopping = False

    # -- what each uplink says ---------------------------------------------------------------

    @abstractmethod
    def streams(self) -> dict[str, str]:
        """stream id -> meter id."""

    @abstractmethod
    def _new_streams(self) -> Mapping[str, S]:
        """A fresh progress record per stream, for one run."""

    @abstractmethod
    async def _run_stream(self, st: S) -> None:
        """Deliver one stream from its cursor until `self._stopping`."""

    @abstractmethod
    def _describe_target(self) -> str:
        """For the start-up log line: what goes where (never a secret)."""

    def _resumed(self) -> str:
        """The log line when refused credentials work again."""
        return "credentials accepted again; resuming delivery"

    async def _before_attempt(self, st: S) -> None:
        """Wait for the stream's turn while credentials are refused (its override may also
        choose a key or take a rate-limit token)."""
        if self._gate.paused:
            await self._gate.wait_turn(st.stream, self.config.auth_probe_secs, self._clock)

    async def _credentials_refused(self, st: S, attempt: Attempt) -> None:
        """401/403: by default, pause every stream and alert once; this stream probes."""
        self._pause(st, f"credentials refused ({attempt.verdict.detail})")

    async def _misdirected(self, st: S, attempt: Attempt) -> bool:
        """True when the uplink handled this answer as "wrong place" (it then probes)."""
        return False

    async def _arrived_anyway(self, st: S, attempt: Attempt) -> bool:
        """No answer came, but the request may have arrived: True if the service has it."""
        return False

    def _ambiguous(self, st: S, attempt: Attempt) -> None:
        """A request that may have arrived is sent again (the uplink counts it)."""

    async def _wait_to_retry(self, st: S, delay: float, verdict: Verdict) -> None:
        await self._clock.sleep(delay)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._gate.paused

    def flush(self) -> None:
        """Retry now (MQTT `cmd/uplinks/<name>/flush`): every wait in a retry backoff, an auth
        probe or idle ends at once (rate limits and the service's own limits still apply)."""
        log.info("%s: flush requested: retrying now", self.name)
        self._clock.wake()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session; safe to call twice."""
        await self._sessions.close()

    def _open_session(self) -> aiohttp.ClientSession:
        return self._sessions.get()

    async def run(self) -> None:
        """Deliver every stream until cancelled; closes the session on the way out."""
        self._open_session()
        log.info("%s: delivering %s", self.name, self._describe_target())
        self._stopping = False
        streams = self._new_streams()

        def stop() -> None:
            self._stopping = True

        try:
            await run_streams_until_cancelled(
                self.name,
                {stream: functools.partial(self._supervise, st) for stream, st in streams.items()},
                busy=lambda stream: streams[stream].in_request,
                grace_secs=self.config.shutdown_grace_secs,
                on_stop=stop,
            )
        finally:
            await self.aclose()

    async def _supervise(self, st: S) -> None:
        await restart_on_error(
            functools.partial(self._run_stream, st),
            what=f"{self.name}/{st.stream}",
            stopping=lambda: self._stopping,
            backoff=self._backoff(),
            clock=self._clock,
            health=self._uplink_health,
        )

    def _backoff(self) -> Backoff:
        return Backoff(self.config.retry_initial_secs, self.config.retry_max_secs, rng=self._rng)

    def _now_ms(self) -> int:
        return int(self._clock.time() * 1000)

    # -- the retry loop ----------------------------------------------------------------------

    async def _settle(
        self,
        st: S,
        send: Callable[[], Awaitable[Attempt]],
        *,
        max_rejected: int | None = None,
    ) -> None:
        """Send until 2xx (invariant 3); raises Refused after bounded rejections
        (max_attempts_rejected, or `max_rejected` for a probe).

        On return the stream is still `in_request`: the caller records the delivery, then
        clears it (so shutdown waits for the record, not only for the answer).
        """
        backoff: Backoff | None = None  # made on the first failure: the common path is short
        rejected = 0
        health = self._uplink_health
        while True:
            await self._before_attempt(st)
            st.in_request = True
            attempt = await send()
            verdict = attempt.verdict
            if verdict.outcome is Outcome.OK:
                self._succeeded(st)
                return
            st.in_request = False
            if self._stopping:
                raise asyncio.CancelledError  # shutting down: do not wait to retry
            if verdict.maybe_arrived and await self._arrived_anyway(st, attempt):
                st.in_request = True
                self._succeeded(st)
                return
            health.last_error = verdict.detail
            health.last_error_ms = self._now_ms()
            if verdict.outcome is Outcome.AUTH:
                health.retries += 1
                await self._credentials_refused(st, attempt)
                continue
            if await self._misdirected(st, attempt):
                health.retries += 1
                continue
            self._failing(st, verdict)
            if verdict.outcome is Outcome.REJECT:
                rejected += 1
                if rejected >= (max_rejected or self.config.max_attempts_rejected):
                    raise Refused(verdict, attempt.answer, rejected)
            health.retries += 1
            if verdict.maybe_arrived:
                self._ambiguous(st, attempt)
            backoff = backoff or self._backoff()
            await self._wait_to_retry(st, backoff.next_delay(verdict.retry_after_secs), verdict)

    async def _post(
        self,
        url: yarl.URL,
        body: bytes,
        headers: Mapping[str, str],
        *,
        observe: Callable[[aiohttp.ClientResponse], None] | None = None,
    ) -> Attempt:
        """One POST; never raises for the network or the service (the verdict says)."""
        session = self._open_session()
        async with self._semaphore:
            try:
                async with session.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    if observe is not None:
                        observe(response)
                    try:
                        answer = await read_limited(response)
                    except TRANSPORT_ERRORS:
                        answer = b""  # the status line arrived: it decides
                    if classify_status(response.status) is Outcome.OK:
                        return Attempt(Verdict(Outcome.OK, response.status), answer)
                    verdict = classify_response(
                        response.status, response.headers, answer, now=self._clock.time()
                    )
                    return Attempt(verdict, answer)
            except TRANSPORT_ERRORS as exc:
                return Attempt(classify_exception(exc))

    # -- outcomes ----------------------------------------------------------------------------

    def _succeeded(self, st: S) -> None:
        if self._gate.reopen():
            self._uplink_health.paused_reason = None
            log.warning("%s: %s", self.name, self._resumed())
        self._recovered(st)

    def _failing(self, st: S, verdict: Verdict) -> None:
        st.failures += 1
        if st.failing_since is None:
            st.failing_since = verdict.detail
            log.warning(
                "%s/%s: delivery failing (%s); retrying, next log on recovery",
                self.name,
                st.stream,
                verdict.detail,
            )

    def _recovered(self, st: S) -> None:
        if st.failing_since is not None:
            log.warning(
                "%s/%s: delivery recovered after %d failed attempt(s)",
                self.name,
                st.stream,
                st.failures,
            )
        st.failing_since = None
        st.failures = 0

    def _pause(self, st: S, reason: str) -> None:
        """Stop every stream (this one probes) and alert once, keeping all data."""
        if not self._gate.close(st.stream):
            return
        self._uplink_health.paused_reason = reason
        self._health.alert(
            self.name,
            f"{reason}: delivery paused, data kept; trying again every "
            f"{self.config.auth_probe_secs:g} s until it is fixed",
        )

    async def _park(
        self,
        st: S,
        position: int,
        *,
        payload: bytes,
        refused: Refused,
        what: str,
        state: Mapping[str, str] | None = None,
    ) -> None:
        """Move an item refused for good to the dead-letter table, past it, and alert."""
        await self._astore.park(
            self.name,
            st.stream,
            position,
            payload=payload.decode(),
            status=refused.verdict.status,
            body=refused.answer.decode("utf-8", "replace"),
            attempts=refused.attempts,
            now_ms=self._now_ms(),
            state=state,
        )
        self._uplink_health.parked += 1
        self._health.alert(
            self.name,
            f"{what} refused {refused.attempts} times ({refused.verdict.detail}); parked in "
            "the dead-letter table",
        )


async def restart_on_error(
    run: Callable[[], Awaitable[None]],
    *,
    what: str,
    stopping: Callable[[], bool],
    backoff: Backoff,
    clock: Clock,
    health: UplinkHealth,
) -> None:
    """Run one uplink stream until stopping; a bug or a store error restarts it (from its
    cursor, which `run` reads itself) after a backoff, instead of ending the daemon."""
    while not stopping():
        try:
            await run()
        except Exception as exc:
            log.exception("%s: stream stopped by an error; restarting", what)
            health.last_error = f"internal: {type(exc).__name__}"
            await clock.sleep(backoff.next_delay())


async def run_streams_until_cancelled(
    name: str,
    workers: Mapping[str, Callable[[], Coroutine[Any, Any, None]]],
    *,
    busy: Callable[[str], bool],
    grace_secs: float,
    on_stop: Callable[[], None],
) -> None:
    """One named task per stream, until this coroutine is cancelled (invariant 2).

    Shutdown: `on_stop()` first (streams stop taking new work); streams waiting (idle, backoff,
    pause) are cancelled at once; a stream that is `busy` may finish for `grace_secs`. Then
    everything left is cancelled and the cancellation propagates.
    """
    async with asyncio.TaskGroup() as group:
        tasks = {
            group.create_task(factory(), name=f"{name}:{stream}"): stream
            for stream, factory in workers.items()
        }
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            on_stop()
            for task, stream in tasks.items():
                if not busy(stream):
                    task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=grace_secs)
            for task in pending:
                task.cancel()
            await asyncio.wait(tasks)
            raise
