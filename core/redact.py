"""The one redaction step: every configured secret value, replaced wherever text leaves the
process (log lines, MQTT payloads, the status document, dead-letter reasons, CLI output).

A server may echo what it was sent (headers, query, form or JSON body) in an error answer, and
that answer ends up in an exception, a health field or an alert. So the step does not trust
callers to know what holds a secret: it replaces each secret's *forms* in any text.

Invariants:
- The forms of a secret: the value itself, its URL-encoded forms (`quote` with and without `/`
  kept, `quote_plus`, upper- and lower-case hex), its JSON-escaped form, and for every
  (user, password) pair the base64 token of HTTP basic auth `user:password` (standard and
  URL-safe alphabet, with and without padding).
- A form of `MIN_MASKED_INSIDE` characters or more is masked inside any text; a shorter value
  (a user name like "demo") only where it is a whole string value (`redact_value`), or every
  gateway id containing the word would be masked too.
- The process-wide set (`learn`, `redact`, `redact_value`) only grows: a secret learnt once is
  masked until the process ends. Config loading and the daemon's start teach it.
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
#: A form this long is masked inside any text (see the module's invariants).
MIN_MASKED_INSIDE = 8


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


def secret_forms(secret: str) -> set[str]:
    """How one secret value can appear in text we were sent back."""
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    for encoded in (quote(secret, safe=""), quote(secret), quote_plus(secret)):
        forms.update((encoded, _lower_hex(encoded)))
    return {form for form in forms if form}


def basic_auth_forms(user: str, password: str) -> set[str]:
    """The base64 tokens an `Authorization: Basic` header for `user:password` carries."""
    raw = f"{user}:{password}".encode()
    forms: set[str] = set()
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = encoded.decode()
        forms.update((text, text.rstrip("=")))
    return forms


class Redactor:
    """Masks a set of secret values (and their forms) in text and in JSON-like values."""

    def __init__(self, secrets: Iterable[str] = (), pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._lock = threading.Lock()
        self._whole: set[str] = set()
        self._inside: list[str] = []
        self._pattern: re.Pattern[str] | None = None
        self.learn(secrets, pairs)

    def learn(self, secrets: Iterable[str] = (), pairs: Iterable[tuple[str, str]] = ()) -> None:
        """Add secret values and (user, password) pairs; forms are derived here."""
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                self._whole.add(secret)
                forms |= secret_forms(secret)
        for user, password in pairs:
            if user and password:
                forms |= basic_auth_forms(user, password)
        long_forms = {form for form in forms if len(form) >= MIN_MASKED_INSIDE}
        with self._lock:
            new = long_forms - set(self._inside)
            if not new:
                return
            inside = sorted({*self._inside, *new}, key=len, reverse=True)  # longest wins
            self._inside = inside
            self._pattern = re.compile("|".join(re.escape(form) for form in inside))

    def __bool__(self) -> bool:
        return bool(self._whole)

    def text(self, text: str) -> str:
        """`text` with every long-enough form of every secret replaced by `***`."""
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)

    def value(self, value: Any) -> Any:
        """`value` as plain JSON: every secret in a string masked (a short one only where it is
        the whole string; in dict keys only inside), NaN/infinity as null."""
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, str):
            return MASK if value in self._whole else self.text(value)
        if isinstance(value, dict):
            return {
                self.text(k) if isinstance(k, str) else k: self.value(v) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        return value


#: The process's redactor: what every outlet of text applies.
PROCESS = Redactor()


def learn(secrets: Iterable[str] = (), pairs: Iterable[tuple[str, str]] = ()) -> None:
    """Teach the process's redactor (config loading and the daemon's start do)."""
    PROCESS.learn(secrets, pairs)


def redact(text: str) -> str:
    """`text` with every secret the process knows masked."""
    return PROCESS.text(text)


def redact_value(value: Any) -> Any:
    """A JSON-like value with every secret the process knows masked."""
    return PROCESS.value(value)
