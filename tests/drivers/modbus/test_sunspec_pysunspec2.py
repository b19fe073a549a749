"""SunSpec against the SunSpec Alliance's own tools: pysunspec2 1.3.7 (PyPI, a test dependency).

- Its model definitions (sunspec2/models/json/model_<id>.json, the SunSpec models repository's
  JSON) say which points a compliant device must implement (`"mandatory": "M"`); the rest may
  answer "not implemented". Our tables must agree, model by model.
- Its encoder (sunspec2.device.Model.get_mb) makes the device image: the common model and a
  meter model with the values we choose, not-implemented points left as pysunspec2 encodes
  them. A real pymodbus server serves that image; the production reader discovers and reads
  it; its values are compared with pysunspec2's own computed values (value x 10**SF).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sunspec2
import sunspec2.device as ss

from drivers.modbus.sunspec import (
    FAMILIES,
    SUNS_MARKER,
    ModelInstance,
    family_of,
    register_map_for,
)
from tests.drivers.modbus.test_sunspec import discovering_reader, raw_holding_device

MODELS_DIR = Path(sunspec2.__file__).parent / "models" / "json"
BASE = 40000


def model_definition(model_id: int) -> list[dict[str, Any]]:
    """The points of a model (ID and L first), as pysunspec2 ships them."""
    document = json.loads((MODELS_DIR / f"model_{model_id}.json").read_text())
    points: list[dict[str, Any]] = document["group"]["points"]
    return points


def optional_offsets(model_id: int) -> set[int]:
    """Data offsets (after ID and L) of points a compliant device may leave unimplemented,
    and of values whose scale factor it may leave unimplemented (they cannot be decoded)."""
    offsets: dict[str, int] = {}
    offset = 0
    for point in model_definition(model_id):
        offsets[point["name"]] = offset - 2
        offset += point["size"]
    mandatory = {p["name"] for p in model_definition(model_id) if p.get("mandatory") == "M"}
    by_name = {p["name"]: p for p in model_definition(model_id)}
    found = set()
    for name, at in offsets.items():
        sf = by_name[name].get("sf")
        if name not in mandatory or (isinstance(sf, str) and sf not in mandatory):
            found.add(at)
    return found


@pytest.mark.parametrize("model_id", sorted(set().union(*(f.ids for f in FAMILIES))))
def test_optional_points_are_those_the_model_definition_does_not_make_mandatory(
    model_id: int,
) -> None:
    family = family_of(model_id)
    assert family is not None
    instance = ModelInstance(model_id, BASE + 69, family.length)
    register_map = register_map_for(instance)
    ours = {r.address - instance.data: r.optional for r in register_map.registers}
    theirs = optional_offsets(model_id)
    assert {at: at in theirs for at in ours} == ours


def point(model: Any, name: str) -> Any:
    """A point of a pysunspec2 model; model 201 names the line-to-line voltages PPVphAB.."""
    if name.startswith("PhVph") and len(name) == 7 and not hasattr(model, name):
        name = "PPVph" + name[5:]
    return getattr(model, name)


def device_image(meter_id: int, values: dict[str, int | None]) -> list[int]:
    """SunS, common model, the meter model (raw point values; None: not implemented), end."""
    common = ss.Model(1)
    common.ID.value, common.L.value = 1, 66
    common.Mn.value, common.Md.value, common.SN.value = "pysunspec2", "image", "PS2-1"
    meter = ss.Model(meter_id)
    meter.ID.value, meter.L.value = meter_id, 105
    for name, value in values.items():
        point(meter, name).value = value
    device = ss.Device()
    device.add_model(common)
    device.add_model(meter)
    data = device.get_mb()
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return [*SUNS_MARKER, *words, 0xFFFF, 0]


#: Raw values and scale factors of a meter image (None: left not implemented).
METER_RAW: dict[str, int | None] = {
    "A_SF": -2,
    "A": 1234,
    "AphA": 411,
    "AphB": 412,
    "AphC": 411,
    "V_SF": -1,
    "PhVphA": 2301,
    "PhVphB": 2299,
    "PhVphC": 2310,
    "PhVphAB": 3990,
    "PhVphBC": 3987,
    "PhVphCA": 4002,
    "Hz_SF": -2,
    "Hz": 4998,
    "W_SF": 1,
    "W": -690,
    "WphA": -230,
    "TotWh_SF": 0,
    "TotWhImp": 12_345_600,
    "TotWhExp": 2_100,
}

#: channel -> pysunspec2 point, for the points the image sets.
CHANNELS = {
    "current": "A",
    "current_l1": "AphA",
    "current_l2": "AphB",
    "current_l3": "AphC",
    "voltage_l1": "PhVphA",
    "voltage_l2": "PhVphB",
    "voltage_l3": "PhVphC",
    "voltage_l1_l2": "PhVphAB",
    "voltage_l2_l3": "PhVphBC",
    "voltage_l3_l1": "PhVphCA",
    "frequency": "Hz",
    "power_active": "W",
    "power_active_l1": "WphA",
    "energy_active_import": "TotWhImp",
    "energy_active_export": "TotWhExp",
}


def expected(meter_id: int, raw: dict[str, int | None]) -> dict[str, float]:
    """pysunspec2's computed values (value x 10**SF) for the points that are implemented."""
    model = ss.Model(meter_id)
    for name, value in raw.items():
        point(model, name).value = value
    return {
        channel: float(point(model, name).cvalue)
        for channel, name in CHANNELS.items()
        if raw.get(name) is not None
    }


@pytest.mark.parametrize(
    ("meter_id", "absent"),
    [
        (203, set()),  # wye: everything we set is there
        (201, {"PhVphA", "AphB", "AphC", "PhVphB", "PhVphC", "PhVphBC", "PhVphCA"}),  # 1 phase
        (202, {"AphA", "PhVphC", "PhVphBC", "PhVphCA"}),  # split phase: AphA optional
        (204, {"PhVphA", "PhVphB", "PhVphC"}),  # delta: no phase-to-neutral voltages
    ],
)
async def test_a_compliant_meter_image_from_pysunspec2_reads_as_pysunspec2_computes(
    meter_id: int, absent: set[str]
) -> None:
    raw = {name: (None if name in absent else value) for name, value in METER_RAW.items()}
    meter = raw_holding_device({BASE: device_image(meter_id, raw)})
    async with discovering_reader(meter) as reader:
        values = await reader.read()
        again = await reader.read()
    want = expected(meter_id, raw)
    assert {c: values.get(c) for c in CHANNELS} == {c: want.get(c) for c in CHANNELS}
    assert again == values
    assert reader.register_map is not None and f"{meter_id}@" in reader.register_map.description
    assert "pysunspec2 image" in reader.register_map.description
