"""Messages an operator re-queued (`meter-gateway deadletters --uplink enerkey --requeue`).

A message held for its unknown outcome (gateway.uplinks.enerkey.inflight) waits for a human,
who checks those hours in EnerKey. When they are missing there, re-queueing it sends it: the
running uplink sends re-queued messages of a meter before its next message.

Invariant: before a re-queued message is sent, its letter is parked again as "outcome
unknown" (one transaction); only EnerKey's JSON 2xx removes it. So a crash, a lost answer
or a stop while it is out leaves it held for a human, never sent twice by the gateway; a
refusal parks it with the refusal. (EnerKey sums values of one hour.)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from core.health import Health
from gateway.store.async_store import AsyncStore
from gateway.uplinks.delivery import Refused
from gateway.uplinks.enerkey.inflight import UNKNOWN, OutcomeUnknown

log = logging.getLogger(__name__)


async def send_requeued(
    astore: AsyncStore,
    *,
    name: str,
    stream: str,
    meter: str,
    health: Health,
    settle: Callable[[bytes], Awaitable[None]],
    now_ms: Callable[[], int],
) -> int:
    """Send what was re-queued for `stream`, oldest first; how many EnerKey took."""
    taken = 0
    for letter in await astore.requeued_letters(name, stream):
        await astore.repark(
            letter.id,
            status=None,
            body=f"{UNKNOWN}: re-queued and sent; no answer recorded (a stop or a lost answer)",
            attempts=1,
            now_ms=now_ms(),
        )
        try:
            await settle(letter.payload.encode())
        except Refused as refused:
            await astore.repark(
                letter.id,
                status=refused.verdict.status,
                body=refused.answer.decode("utf-8", "replace"),
                attempts=refused.attempts,
                now_ms=now_ms(),
            )
            health.alert(
                name,
                f"meter {meter}: re-queued message #{letter.id} refused again "
                f"({refused.verdict.detail}); parked again",
            )
            continue
        except OutcomeUnknown as unknown:
            health.alert(
                name,
                f"meter {meter}: re-queued message #{letter.id}: {UNKNOWN} again "
                f"({unknown.verdict.detail}); held again, not sent again",
            )
            continue
        await astore.forget_dead_letter(letter.id)
        taken += 1
        log.info("%s/%s: re-queued message #%d delivered", name, stream, letter.id)
    return taken
