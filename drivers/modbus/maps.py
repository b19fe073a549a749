"""Which register map a Modbus meter is read with: built in, a user map file, or inline.

A meter names its map one of three ways (docs/modbus-meters.md, "Your own register map"):
- `model: sdm630`: a built-in map (drivers/modbus/registers/sdm630.yaml); `model: sunspec` is
  discovered from the device instead;
- `register_map: maps/pump.yaml`: a map file, relative to the config file's directory;
- `register_map: {model: ..., registers: [...]}`: the same schema, inline in the config.

The config loader calls `resolve_maps` (drivers.checks) once: every user map is validated there,
so a mistake stops the start-up with `file:line: key: why` (the config's line for an inline map,
the map file's own line for a file), and the resolved map is kept on the meter. Everything that
needs a meter's map afterwards (the daemon's readers, `meter-gateway read`, HA discovery) asks
`meter_register_map`, so all of them read with the same map.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from drivers.modbus.register_map import (
    RegisterMap,
    builtin_models,
    load_builtin,
    load_map_file,
)

if TYPE_CHECKING:
    from drivers.config import MeterConfig

#: The model whose register map is discovered from the device rather than built in.
SUNSPEC_MODEL: Final = "sunspec"
MAP_SUFFIXES: Final = (".yaml", ".yml")


def looks_like_path(model: str) -> bool:
    """Is this `model:` value a file path someone meant as `register_map:`?"""
    return model.endswith(MAP_SUFFIXES) or "/" in model


def model_problem(meter: MeterConfig) -> tuple[str, str] | None:
    """(key, why) when a Modbus meter's `model`/`register_map` pair names no usable map."""
    if meter.register_map is not None:
        if meter.model is not None:
            return "model", "give either model (a built-in map) or register_map, not both"
        return None
    if meter.model is None:
        return "", "required key 'model' is missing (a built-in map; or register_map: your own)"
    if meter.model in builtin_models():
        return None
    if looks_like_path(meter.model):
        return "model", (
            f"{meter.model!r} is not a built-in model; name a map file with "
            f"`register_map: {meter.model}` instead"
        )
    known = ", ".join(builtin_models())
    return "model", (
        f"unknown model {meter.model!r} (built in: {known}; or give your own with register_map)"
    )


def map_path(value: str, base_dir: Path) -> Path:
    """A `register_map:` path: `~` expanded, relative ones from the config file's directory."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def inline_data(meter: MeterConfig) -> dict[str, Any]:
    """An inline map; its `model` (a label for logs and HA) defaults to the meter id."""
    assert isinstance(meter.register_map, dict)
    return {"model": meter.id, **meter.register_map}


def meter_register_map(meter: MeterConfig) -> RegisterMap | None:
    """The map a Modbus meter is read with; None for `model: sunspec` (discovered at the
    first read) and for meters without one (serial meters).

    Normally resolved by the config loader. A Meter built without it (tests, tools) has its
    user map resolved here: inline maps validated, file paths taken from the working
    directory; problems raise RegisterMapError / pydantic's ValidationError.
    """
    resolved = meter._resolved_map
    if isinstance(resolved, RegisterMap):
        return resolved
    if meter.register_map is not None:
        if isinstance(meter.register_map, str):
            register_map = load_map_file(map_path(meter.register_map, Path.cwd()))
        else:
            register_map = RegisterMap.model_validate(inline_data(meter))
        meter._resolved_map = register_map
        return register_map
    if meter.model is None or meter.model == SUNSPEC_MODEL:
        return None
    return load_builtin(meter.model)


def map_label(meter: MeterConfig, register_map: RegisterMap | None) -> str:
    """How commands name a meter's map: the model, or the user map's model and where it is."""
    if meter.register_map is None:
        return meter.model or "none"
    name = register_map.model if register_map is not None else meter.id
    if isinstance(meter.register_map, str):
        return f"{name} (map file {meter.register_map})"
    return f"{name} (inline map)"
