"""Durations in config: every `<name>_secs` key takes `15`, `15s`, `250ms`, `5m`, `1h` or `1d`.

One parser for every duration, so `clock_hold_max_secs: 15m` and `timeout_secs: 3s` mean what
they say alike. A bare number is seconds. Not-a-number, infinity, negative values and
booleans are refused with a message that shows the accepted forms.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Final

from pydantic import AfterValidator, BeforeValidator

_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN: Final = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|min|m|h|d)?\s*$")
_FORMS: Final = "a duration: a number of seconds, or with a unit: 250ms, 15s, 5m, 1h, 1d"


def parse_seconds(value: object) -> float:
    """A config duration in seconds (finite, not negative)."""
    if isinstance(value, bool):
        raise ValueError(_FORMS)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _PATTERN.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError(_FORMS)
    if not math.isfinite(seconds):
        raise ValueError(f"{_FORMS} (not {seconds})")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


#: A positive duration in seconds.
Seconds = Annotated[float, BeforeValidator(parse_seconds), AfterValidator(_positive)]
#: A duration in seconds that may be zero ("no wait").
SecondsOrZero = Annotated[float, BeforeValidator(parse_seconds)]
