"""Pending MTS tests survive restarts and crashes; removed meters' tests are cancelled."""

from __future__ import annotations

import json
import time
from pathlib import Path

from core.health import Health
from gateway.sources.mts.state import NAMESPACE, MtsState, PendingTest
from tests.fakes.mts import FakeMts
from tests.fixtures.mts import METER_PASSWORD, REMOTE_ADDRESS
from tests.gateway.sources.mts.mts_helpers import METER, opened_store, running, section
from tests.helpers.eventually import eventually


async def pending_state(tmp_path: Path) -> dict[str, dict[str, object]]:
    async with opened_store(tmp_path) as astore:
        text = await astore.state(NAMESPACE, "pending")
    return json.loads(text or "{}")


async def test_a_restart_while_a_test_is_pending_resumes_polling_that_test(
    tmp_path: Path, fake_mts: FakeMts
) -> None:
    fake_mts.hold()
    config = section(fake_mts)
    async with opened_store(tmp_path) as astore, running(config, astore):
        await eventually(lambda: fake_mts.calls["test-status"] >= 2, what="polling")
    (test_id,) = fake_mts.tests
    assert (await pending_state(tmp_path))[METER]["test_id"] == test_id

    fake_mts.release()
    async with opened_store(tmp_path) as astore, running(config, astore) as runtime:
        await eventually(lambda: astore.store.count(METER) == 48, what="the survey")
        await eventually(lambda: not runtime.state.pending, what="the test done")
    assert fake_mts.calls["test-request"] == 1  # the same test, not a new one
    assert list(fake_mts.tests) == [test_id]
    assert await pending_state(tmp_path) == {}


async def test_a_crash_between_request_and_storing_its_id_is_found_by_test_search(
    tmp_path: Path, fake_mts: FakeMts
) -> None:
    """A crash loop sent the same reference three times; paging (2 per page) finds all three:
    the newest is adopted, the other pending ones are cancelled, nothing is requested again."""
    fake_mts.max_page = 2
    now_ms = int(time.time() * 1000)
    reference = f"site-42/{METER}/crashed"
    params = {
        "requestReference": reference,
        "meterType": "ELSTERA1700",
        "remoteAddress": REMOTE_ADDRESS,
        "password": METER_PASSWORD,
        "surveyDays": 1,
    }
    other = fake_mts.create_test({**params, "requestReference": "someone-else"}, now_ms)
    ids = [fake_mts.create_test(params, now_ms + n) for n in range(3)]
    async with opened_store(tmp_path) as astore:
        await MtsState(astore).set_pending(METER, PendingTest(reference, now_ms - 1000))
    health = Health()
    config = section(fake_mts, search_page_size=2)
    async with opened_store(tmp_path) as astore, running(config, astore, health) as runtime:
        await eventually(lambda: astore.store.count(METER) == 48, what="the survey")
        await eventually(lambda: not runtime.state.pending, what="the test done")
    assert fake_mts.calls["test-request"] == 0
    assert fake_mts.calls["test-search"] == 2
    assert fake_mts.tests[ids[-1]].state == "DONE"
    assert sorted(fake_mts.cancelled) == ids[:2]
    assert fake_mts.tests[other].state == "PENDING"
    assert health.meter(METER).facts["last_test_id"] == ids[-1]


async def test_a_request_that_never_reached_mts_is_sent_again_with_its_reference(
    tmp_path: Path, fake_mts: FakeMts
) -> None:
    reference = f"site-42/{METER}/lost"
    async with opened_store(tmp_path) as astore:
        await MtsState(astore).set_pending(
            METER, PendingTest(reference, int(time.time() * 1000) - 1000)
        )
    async with opened_store(tmp_path) as astore, running(section(fake_mts), astore):
        await eventually(lambda: astore.store.count(METER) == 48, what="the survey")
    assert fake_mts.calls["test-search"] == 1
    assert [p["requestReference"] for p in fake_mts.requested()] == [reference]


async def test_a_request_whose_answer_was_lost_is_found_not_repeated(
    tmp_path: Path, fake_mts: FakeMts
) -> None:
    """MTS took the request but the connection dropped before its answer: test-search."""
    fake_mts.process_then_drop(1, "test-request")
    async with opened_store(tmp_path) as astore, running(section(fake_mts), astore):
        await eventually(lambda: astore.store.count(METER) == 48, what="the survey")
    assert len(fake_mts.tests) == 1
    assert fake_mts.calls["test-search"] == 1


async def test_the_pending_test_of_a_meter_removed_from_config_is_cancelled(
    tmp_path: Path, fake_mts: FakeMts
) -> None:
    fake_mts.hold()
    params = {"meterType": "ELSTERA1700", "remoteAddress": REMOTE_ADDRESS, "surveyDays": 1}
    old = fake_mts.create_test({**params, "requestReference": "site-42/gone/x"})
    async with opened_store(tmp_path) as astore:
        state = MtsState(astore)
        await state.requested("gone", PendingTest("site-42/gone/x", 1, old), 1)
    async with opened_store(tmp_path) as astore, running(section(fake_mts), astore):
        await eventually(lambda: fake_mts.cancelled == [old], what="the cancel")
        await eventually(lambda: "gone" not in (astore.store.state(NAMESPACE, "pending") or ""))
        last = astore.store.state(NAMESPACE, "last_request") or ""
    assert "gone" not in last
    assert all(op != "test-cancel" for op, _, _ in fake_mts.refused)
