"""Human durations in config ("60s", "5m", "1h", "250ms", or a number of seconds)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)?\s*$")


def parse_seconds(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("a duration, e.g. 60s, 5m, 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _PATTERN.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError("a duration, e.g. 60s, 5m, 1h")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


#: Seconds as a float, written in config as "60s", "5m", "1h", "250ms" or a plain number.
Seconds = Annotated[float, BeforeValidator(parse_seconds)]
