"""Every duration in config is a `<name>_secs` key that takes the same forms."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from typing import Any, get_args

import pytest
from pydantic import BaseModel, ValidationError

import drivers.config
import gateway.config.schema
from core.config_base import Strict
from core.durations import parse_seconds


def _all_models() -> Iterator[type[BaseModel]]:
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [gateway.config.schema.Config]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        yield model
        for info in model.model_fields.values():
            todo.extend(_models_in(info.annotation))


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):
        yield from _models_in(arg)


def _is_duration(info: Any) -> bool:
    """A field parsed by core.durations (its own metadata or that of a union member)."""
    stack = [info.annotation, *info.metadata]
    while stack:
        item = stack.pop()
        if getattr(item, "func", None) is parse_seconds:
            return True
        stack.extend(getattr(item, "__metadata__", ()))
        stack.extend(get_args(item))
    return False


def test_the_whole_config_is_reachable_from_the_top() -> None:
    names = {model.__name__ for model in _all_models()}
    assert {"MeterConfig", "WatticsConfig", "MtsScheduleConfig", "SmlBusConfig"} <= names
    assert drivers.config.MeterConfig in set(_all_models())


def test_every_duration_key_is_named_secs_and_every_secs_key_is_a_duration() -> None:
    wrong: list[str] = []
    for model in _all_models():
        if not issubclass(model, Strict):
            continue
        for name, info in model.model_fields.items():
            duration = _is_duration(info)
            if duration != name.endswith("_secs"):
                kind = "duration not named _secs" if duration else "_secs but not a duration"
                wrong.append(f"{model.__name__}.{name}: {kind}")
    assert wrong == []


@pytest.mark.parametrize(
    ("written", "seconds"),
    [(15, 15.0), ("15", 15.0), ("15s", 15.0), ("250ms", 0.25), ("5m", 300.0), ("5min", 300.0),
     ("1h", 3600.0), ("1d", 86400.0), ("1.5s", 1.5), (".5s", 0.5), (0, 0.0)],
)  # fmt: skip
def test_a_duration_is_written_as_a_number_or_with_a_unit(written: object, seconds: float) -> None:
    assert parse_seconds(written) == seconds


@pytest.mark.parametrize("written", [math.nan, math.inf, "-1s", -1, True, "soon", "5 parsecs", ""])
def test_nonsense_durations_are_refused(written: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_seconds(written)


def test_every_duration_key_takes_every_form() -> None:
    from drivers.modbus.config import ModbusTcpBusConfig
    from gateway.config.schema import GatewayConfig

    for written in ("3", "3s", "3000ms", 3):
        bus = ModbusTcpBusConfig(type="modbus-tcp", host="h", timeout_secs=written)  # type: ignore[arg-type]
        assert bus.timeout_secs == 3.0
    assert GatewayConfig(id="g", clock_hold_max_secs="15m").clock_hold_max_secs == 900.0  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="must be positive"):
        ModbusTcpBusConfig(type="modbus-tcp", host="h", timeout_secs="0s")  # type: ignore[arg-type]
