"""`meter-gateway demo`: simulated meters -> the real daemon -> a local strict fake Wattics.

Everything runs on loopback in this one process: two simulated Eastron SDM630 behind one
Modbus TCP server, the strict fake Wattics from tests/fakes (so a packet the real service
would refuse fails the demo too), and the same Daemon that `meter-gateway run` starts.
It needs a source checkout (the fakes are test code, not installed with the package).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from drivers.modbus.register_map import load_builtin
from drivers.simulator import SimulatedMeter, serve_modbus_tcp
from gateway.config.loader import load_config
from gateway.daemon import Daemon

REPO = Path(__file__).resolve().parents[2]
DEMO_USER = "demo"
DEMO_PASSWORD = "demo-password"  # the fake's, on loopback; not a real secret
METERS = {"incomer": ("demo-incomer", 1), "pv-inverter": ("demo-pv", 2)}

CONFIG = """\
gateway: {{id: demo-site, timezone: Europe/Dublin, data_dir: "{data_dir}", clock_check: none}}
buses:
  plant: {{type: modbus-tcp, host: 127.0.0.1, port: {modbus_port}, timeout_secs: 1.0}}
meters:
  - {{id: incomer, bus: plant, unit: 1, model: sdm630, interval_secs: {interval}}}
  - {{id: pv-inverter, bus: plant, unit: 2, model: sdm630, interval_secs: {interval}}}
uplinks:
  wattics:
    url: "{wattics_url}"
    username: ${{DEMO_WATTICS_USER}}
    password: ${{DEMO_WATTICS_PASSWORD}}
    retry_initial_secs: 0.5
    meters:
      incomer: {{id: demo-incomer}}
      pv-inverter: {{id: demo-pv}}
"""


def _fake_wattics_class() -> type:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        from tests.fakes.wattics import FakeWattics
    except ImportError as exc:
        raise SystemExit("the demo needs a source checkout of meter-gateway (tests/fakes)") from exc
    return FakeWattics


def _describe(packet: dict[str, object]) -> str:
    def number(key: str, scale: float = 1.0, digits: int = 1) -> str:
        value = packet.get(key)
        return f"{float(value) / scale:,.{digits}f}" if isinstance(value, int | float) else "-"

    phases = (packet.get(f"aP_{i}") for i in (1, 2, 3))
    power = sum(float(p) for p in phases if isinstance(p, int | float))
    return (
        f"{packet['tsISO8601']}  {packet['id']:<13} P={power / 1000:6.2f} kW  "
        f"V1={number('v_1')} V  I1={number('c_1', digits=2)} A  pC_1={number('pC_1', digits=0)} Wh"
    )


async def run_demo(*, seconds: float | None = None, interval: float = 5.0) -> int:
    fake_class = _fake_wattics_class()
    register_map = load_builtin("sdm630")
    meters = [SimulatedMeter(register_map, unit_id=unit) for _, unit in METERS.values()]
    for meter in meters:
        meter.tick(time.time())
    with tempfile.TemporaryDirectory(prefix="meter-gateway-demo-") as data_dir:
        async with (
            serve_modbus_tcp(meters) as modbus,
            fake_class(DEMO_USER, DEMO_PASSWORD, {s for s, _ in METERS.values()}) as wattics,
        ):
            config_path = Path(data_dir) / "demo.yaml"
            config_path.write_text(
                CONFIG.format(
                    data_dir=data_dir,
                    modbus_port=modbus.port,
                    interval=f"{interval:g}s",
                    wattics_url=wattics.url,
                )
            )
            config = load_config(
                config_path,
                {"DEMO_WATTICS_USER": DEMO_USER, "DEMO_WATTICS_PASSWORD": DEMO_PASSWORD},
            )
            print(
                f"demo: 2 simulated SDM630 on modbus-tcp 127.0.0.1:{modbus.port}, "
                f"strict fake Wattics at {wattics.url}\n"
                f"demo: store in {data_dir}; reading every {interval:g}s; Ctrl-C stops\n"
                f"demo: status page at http://{config.http.listen}/ (if the port is free)\n",
                flush=True,
            )
            daemon = Daemon(config)
            tasks = [
                asyncio.create_task(_move_values(meters), name="demo-simulate"),
                asyncio.create_task(_print_forwarded(wattics), name="demo-print"),
            ]
            if seconds is not None:
                asyncio.get_running_loop().call_later(seconds, daemon.stop)
            try:
                await daemon.run()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            forwarded = {stream: len(p) for stream, p in wattics.accepted.items()}
            print(
                f"\ndemo: forwarded {forwarded}, discarded by Wattics: "
                f"{len(wattics.all_discarded())}, rejected: {len(wattics.rejected)}"
            )
            return 0 if not wattics.rejected and not wattics.all_discarded() else 1


async def _move_values(meters: list[SimulatedMeter]) -> None:
    while True:
        await asyncio.sleep(1.0)
        for meter in meters:
            meter.tick(time.time())


async def _print_forwarded(wattics: object) -> None:
    shown: dict[str, int] = {}
    while True:
        await asyncio.sleep(0.2)
        for stream, packets in getattr(wattics, "accepted", {}).items():
            for packet in packets[shown.get(stream, 0) :]:
                with contextlib.suppress(Exception):
                    print(f"-> wattics  {_describe(packet)}", flush=True)
            shown[stream] = len(packets)
