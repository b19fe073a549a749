"""`meter-gateway demo`: simulated meters -> the real daemon -> a local strict fake Wattics.

Everything runs on loopback in this one process: two simulated Eastron SDM630 (units 1 and 2)
behind one Modbus TCP server that answers no other unit id (like an RS-485-to-TCP gateway),
the strict fake Wattics from tests/fakes (so a packet the real service would refuse fails the
demo too), and the same Daemon that `meter-gateway run` starts. It needs a source checkout
(the fakes are test code, not installed with the package).

`--keep DIR` is for commissioning practice: the config, its credentials (the fake's, on
loopback) and the store go to DIR and stay there; while the demo runs — and after the gateway
part has stopped (`--seconds`), until Ctrl-C — the simulator and the fake answer, so `read`,
`scan`, `check-config` and even `run` can be tried against them with DIR/config.yaml, as at a
cabinet. Ctrl-C and SIGTERM stop it alike: the daemon stops cleanly and the summary is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from drivers.modbus.register_map import load_builtin
from drivers.simulator import SimulatedMeter, serve_modbus_tcp
from gateway.config.loader import load_config
from gateway.daemon import Daemon

REPO = Path(__file__).resolve().parents[2]
DEMO_USER = "demo"
DEMO_PASSWORD = "demo-password"  # the fake's, on loopback; not a real secret
CREDENTIALS = {"DEMO_WATTICS_USER": DEMO_USER, "DEMO_WATTICS_PASSWORD": DEMO_PASSWORD}
METERS = {"incomer": ("demo-incomer", 1), "pv-inverter": ("demo-pv", 2)}

CONFIG = """\
# Written by `meter-gateway demo`: two simulated SDM630 (units 1, 2) on loopback Modbus TCP,
# forwarded to a local fake Wattics. The secrets are files in {credentials}/.
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


@contextlib.contextmanager
def _site_dir(keep: Path | None) -> Iterator[Path]:
    """Where config, credentials and store go: DIR (kept), or a temporary directory."""
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="meter-gateway-demo-") as temporary:
            yield Path(temporary)
        return
    keep.mkdir(parents=True, exist_ok=True)
    yield keep.resolve()


def _write_site(site: Path, *, modbus_port: int, wattics_url: str, interval: float) -> Path:
    credentials = site / "credentials"
    credentials.mkdir(mode=0o700, exist_ok=True)
    for name, value in CREDENTIALS.items():
        (credentials / name).write_text(value + "\n")
        (credentials / name).chmod(0o600)
    (site / "data").mkdir(exist_ok=True)
    config_path = site / "config.yaml"
    config_path.write_text(
        CONFIG.format(
            credentials=credentials,
            data_dir=site / "data",
            modbus_port=modbus_port,
            interval=f"{interval:g}s",
            wattics_url=wattics_url,
        )
    )
    return config_path


def _commissioning_hints(config: Path) -> str:
    credentials = config.parent / "credentials"
    return (
        "demo: try, from another terminal (the simulator answers units 1 and 2 only):\n"
        f"  meter-gateway read incomer -c {config}\n"
        f"  meter-gateway read pv-inverter -c {config} --raw\n"
        f"  meter-gateway scan plant -c {config} --units 1-10\n"
        f"  meter-gateway deadletters -c {config}\n"
        f"  CREDENTIALS_DIRECTORY={credentials} meter-gateway check-config --strict {config}\n"
    )


async def run_demo(
    *, seconds: float | None = None, interval: float = 5.0, keep: Path | None = None
) -> int:
    fake_class = _fake_wattics_class()
    register_map = load_builtin("sdm630")
    meters = [SimulatedMeter(register_map, unit_id=unit) for _, unit in METERS.values()]
    for meter in meters:
        meter.tick(time.time())
    stopping = asyncio.Event()
    with _site_dir(keep) as site, _stop_on_signals(stopping):
        async with (
            serve_modbus_tcp(meters) as modbus,
            fake_class(DEMO_USER, DEMO_PASSWORD, {s for s, _ in METERS.values()}) as wattics,
        ):
            config_path = _write_site(
                site, modbus_port=modbus.port, wattics_url=wattics.url, interval=interval
            )
            config = load_config(config_path, {"CREDENTIALS_DIRECTORY": str(site / "credentials")})
            print(
                f"demo: 2 simulated SDM630 on modbus-tcp 127.0.0.1:{modbus.port}, "
                f"strict fake Wattics at {wattics.url}\n"
                f"demo: config {config_path}, store in {site / 'data'}; "
                f"reading every {interval:g}s; Ctrl-C stops\n"
                f"demo: status page at http://{config.http.listen}/ (if the port is free)\n"
                + (_commissioning_hints(config_path) if keep is not None else ""),
                flush=True,
            )
            daemon = Daemon(config)
            shown: dict[str, int] = {}
            tasks = [
                asyncio.create_task(_move_values(meters), name="demo-simulate"),
                asyncio.create_task(_print_forwarded(wattics, shown), name="demo-print"),
                asyncio.create_task(_stop_when(stopping, daemon), name="demo-stop"),
            ]
            if seconds is not None:
                asyncio.get_running_loop().call_later(seconds, daemon.stop)
            try:
                await daemon.run()
                _print_new(wattics, shown)
                forwarded = {stream: len(p) for stream, p in wattics.accepted.items()}
                print(
                    f"\ndemo: forwarded {forwarded}, discarded by Wattics: "
                    f"{len(wattics.all_discarded())}, rejected: {len(wattics.rejected)}",
                    flush=True,
                )
                if keep is not None and not stopping.is_set():
                    print(
                        f"demo: the gateway stopped; simulator still running on 127.0.0.1:"
                        f"{modbus.port} (and the fake Wattics): {config_path} is ready for "
                        f"`read`, `scan` and `run`; Ctrl-C stops",
                        flush=True,
                    )
                    await stopping.wait()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            if keep is not None:
                print(f"demo: kept {site} (config, credentials, store)", flush=True)
            return 0 if not wattics.rejected and not wattics.all_discarded() else 1


@contextlib.contextmanager
def _stop_on_signals(stopping: asyncio.Event) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM set `stopping`: the demo stops cleanly either way."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stopping.set)
    try:
        yield
    finally:
        for sig in signals:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


async def _stop_when(stopping: asyncio.Event, daemon: Daemon) -> None:
    await stopping.wait()
    daemon.stop()


async def _move_values(meters: list[SimulatedMeter]) -> None:
    while True:
        await asyncio.sleep(1.0)
        for meter in meters:
            meter.tick(time.time())


async def _print_forwarded(wattics: object, shown: dict[str, int]) -> None:
    while True:
        await asyncio.sleep(0.2)
        _print_new(wattics, shown)


def _print_new(wattics: object, shown: dict[str, int]) -> None:
    """Every packet the fake accepted since the last call (`shown`: per stream, how many)."""
    for stream, packets in getattr(wattics, "accepted", {}).items():
        for packet in packets[shown.get(stream, 0) :]:
            with contextlib.suppress(Exception):
                print(f"-> wattics  {_describe(packet)}", flush=True)
        shown[stream] = len(packets)
