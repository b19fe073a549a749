"""The simulated Modbus meter tests talk to (the class lives in drivers/simulator.py, since the
demo command serves it too). Strict like every fake: an unknown channel is an error, reads
outside the map's span or in a forbidden range answer exception 2, writes are refused."""

from __future__ import annotations

from drivers.simulator import SimulatedMeter, SimulatorServer, serve_modbus_tcp

__all__ = ["SimulatedMeter", "SimulatorServer", "serve_modbus_tcp"]
