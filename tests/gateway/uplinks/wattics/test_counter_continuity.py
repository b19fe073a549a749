"""A meter swap or register reset never reaches Wattics as negative or absurd consumption."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from core.flags import COUNTER_JUMP, COUNTER_RESET
from core.health import Health
from core.sample import Sample
from gateway.store.async_store import AsyncStore
from gateway.uplinks.wattics.continuity import CounterContinuity
from gateway.uplinks.wattics.uplink import WatticsUplink
from tests.fakes.wattics import FakeWattics
from tests.gateway.uplinks.wattics.test_wattics_uplink import append, make_config, running

START_MS = 1_767_225_600_000
MIN = 60_000


def reading(i: int, wh: float, *flags: str) -> Sample:
    return Sample("m", START_MS + i * MIN, {"energy_active_import": wh}, frozenset(flags))


def test_a_meter_swap_continues_from_the_last_forwarded_value() -> None:
    continuity = CounterContinuity()
    raw = [
        reading(0, 5000.0),
        reading(1, 5100.0),
        reading(2, 20.0, COUNTER_RESET),  # new meter
        reading(3, 70.0),
        reading(4, 9_000_000.0, COUNTER_JUMP),  # a one-read glitch...
        reading(5, 120.0, COUNTER_RESET),  # ...and its return
        reading(6, 170.0),
    ]
    forwarded = [continuity.apply(s).values["energy_active_import"] for s in raw]
    assert forwarded == [5000.0, 5100.0, 5100.0, 5150.0, 5150.0, 5150.0, 5200.0]


def test_unflagged_samples_and_other_channels_pass_unchanged() -> None:
    continuity = CounterContinuity()
    sample = Sample("m", START_MS, {"energy_active_import": 10.0, "power_active": -5.0})
    assert continuity.apply(sample) is sample


@given(
    steps=st.lists(st.tuples(st.floats(min_value=-1e6, max_value=1e6), st.booleans()), max_size=40),
    cut=st.integers(min_value=0, max_value=40),
)
def test_forwarded_counters_never_go_down_and_a_replay_from_saved_state_is_exact(
    steps: list[tuple[float, bool]], cut: int
) -> None:
    """Every decrease is flagged by the poller (the premise); then what is forwarded never
    decreases, and resuming from the state saved after any prefix gives the same values."""
    samples: list[Sample] = []
    value = 1000.0
    for i, (delta, glitch) in enumerate(steps):
        value = max(0.0, value + delta)
        previous = samples[-1].values["energy_active_import"] if samples else None
        flags = []
        if previous is not None and value < previous:
            flags.append(COUNTER_RESET)
        if glitch:
            flags.append(COUNTER_JUMP)
        samples.append(reading(i, value, *flags))
    whole = CounterContinuity()
    forwarded = [whole.apply(s).values["energy_active_import"] for s in samples]
    assert all(b >= a for a, b in itertools.pairwise(forwarded))
    first = CounterContinuity()
    head = [first.apply(s).values["energy_active_import"] for s in samples[:cut]]
    resumed = CounterContinuity.load(first.dump())
    # A crash may replay the last applied sample once more: idempotent.
    replay = samples[max(0, cut - 1) : cut] + samples[cut:]
    tail = [resumed.apply(s).values["energy_active_import"] for s in replay]
    assert head + tail[1 if cut else 0 :] == forwarded


async def test_wattics_never_sees_pc_1_go_down_across_a_swap_and_a_restart(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    await append(
        astore,
        [reading(0, 5000.0), reading(1, 5100.0), reading(2, 20.0, COUNTER_RESET)],
    )
    config = make_config(fake_wattics, {"m": "stream-a"})
    async with running(WatticsUplink(config, store=astore, health=Health(), timezone="UTC")):
        await fake_wattics.wait_accepted(3)
    # A restart: the offset comes back from the store with the cursor.
    await append(astore, [reading(3, 70.0)])
    async with running(WatticsUplink(config, store=astore, health=Health(), timezone="UTC")):
        await fake_wattics.wait_accepted(4)
    assert [p["pC_1"] for p in fake_wattics.delivered("stream-a")] == [5000, 5100, 5100, 5150]


async def test_continuity_can_be_switched_off(
    fake_wattics: FakeWattics, astore: AsyncStore
) -> None:
    await append(astore, [reading(0, 5000.0), reading(1, 20.0, COUNTER_RESET)])
    config = make_config(fake_wattics, {"m": "stream-a"}, counter_continuity=False)
    async with running(WatticsUplink(config, store=astore, health=Health(), timezone="UTC")):
        await fake_wattics.wait_accepted(2)
    assert [p["pC_1"] for p in fake_wattics.delivered("stream-a")] == [5000, 20]
