"""Fixtures every uplink test may use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store.async_store import AsyncStore
from gateway.store.database import Store


@pytest.fixture
async def astore(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    """A real store in the test's temp dir, closed after the test."""
    astore = AsyncStore(Store(tmp_path / "queue.db"))
    yield astore
    await astore.aclose()
