"""EnerKey's two API keys: use the valid one, switch on refusal, know when both are refused.

A profile has two keys with validity dates so that one can be renewed while the other works.
Keys are named "A" and "B" (their order in config) in every log line, alert and health fact:
the secret itself is only ever put into the Authorization header.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from pydantic import SecretStr

from gateway.uplinks.enerkey.config import EnerKeyApiKeyConfig

LABELS = ("A", "B")


def utc_today() -> date:
    return datetime.now(UTC).date()


@dataclass
class ApiKey:
    label: str
    secret: SecretStr = field(repr=False)
    valid_from: date | None = None
    valid_until: date | None = None
    #: EnerKey answered 401/403 with this key (cleared when a probe starts over).
    refused: bool = False

    def valid_on(self, day: date) -> bool:
        """Inside its configured dates (inclusive, UTC days); no dates: always."""
        if self.valid_from is not None and day < self.valid_from:
            return False
        return self.valid_until is None or day <= self.valid_until


class KeyRing:
    """Which key to send. Sticky: the key that works is kept until it is refused or its dates
    end; a key outside its dates is still tried when no key is inside them (the server
    decides, the dates are a hint).
    """

    def __init__(
        self, keys: Sequence[EnerKeyApiKeyConfig], *, today: Callable[[], date] = utc_today
    ) -> None:
        if not 1 <= len(keys) <= len(LABELS):
            raise ValueError("one or two API keys")
        self.keys = [
            ApiKey(label, k.key, k.valid_from, k.valid_until)
            for label, k in zip(LABELS, keys, strict=False)
        ]
        self._today = today
        self._current: ApiKey | None = None

    def current(self) -> ApiKey | None:
        """The key to send now; None when every key was refused."""
        usable = [k for k in self.keys if not k.refused]
        if not usable:
            return None
        day = self._today()
        pool = [k for k in usable if k.valid_on(day)] or usable
        if self._current not in pool:
            self._current = pool[0]
        return self._current

    def refuse(self, key: ApiKey) -> bool:
        """Mark `key` refused; True if it was not marked already."""
        was = key.refused
        key.refused = True
        return not was

    def reset(self) -> None:
        """Forget refusals (a probe after a pause tries every key again)."""
        for key in self.keys:
            key.refused = False

    def refused_labels(self) -> list[str]:
        return [k.label for k in self.keys if k.refused]

    def outside_dates(self) -> list[str]:
        day = self._today()
        return [k.label for k in self.keys if not k.valid_on(day)]
