"""Validate MQTT discovery messages with Home Assistant's own code (run with .venv-ha's python).

Reads a JSON object {topic: payload text} on stdin and prints {topic: problem or null}. Each
message goes the way Home Assistant's MQTT discovery takes it
(homeassistant/components/mqtt/discovery.py, `async_discovery_message_received`): the topic
must match its TOPIC_MATCHER and name a supported component, the payload must be a JSON
object; abbreviations are expanded with its tables; then the component's DISCOVERY_SCHEMA
validates it, as `async_setup_entry_helper` does before an entity is made. A top-level key the
release silently drops (the schemas use REMOVE_EXTRA) is reported too: a key we send that HA
ignores is a setting the user does not get.

Runs only where homeassistant is installed (./dev.sh test-ha); the gateway never imports it.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any


def _load() -> Any:
    # mqtt's import chain needs websocket_api, whose import needs persistent_notification
    # loaded first (the order Home Assistant's own bootstrap gives).
    importlib.import_module("homeassistant.components.persistent_notification")
    return importlib.import_module("homeassistant.components.mqtt.discovery")


def validate(topic: str, text: str, prefix: str, discovery: Any) -> str | None:
    import voluptuous as vol
    from homeassistant.components.mqtt.abbreviations import ABBREVIATIONS, DEVICE_ABBREVIATIONS

    trimmed = topic.replace(f"{prefix}/", "", 1)
    match = discovery.TOPIC_MATCHER.match(trimmed)
    if match is None:
        return f"illegal discovery topic {topic!r}"
    component = match.group("component")
    if component not in discovery.SUPPORTED_COMPONENTS:
        return f"integration {component} is not supported"
    try:
        payload = json.loads(text)
    except ValueError:
        return "payload is not JSON"
    if not isinstance(payload, dict):
        return "payload is not a JSON object"
    payload = {ABBREVIATIONS.get(k, k): v for k, v in payload.items()}
    if isinstance(payload.get("device"), dict):
        device = payload["device"]
        payload["device"] = {DEVICE_ABBREVIATIONS.get(k, k): v for k, v in device.items()}
    payload["platform"] = "mqtt"
    platform = importlib.import_module(f"homeassistant.components.mqtt.{component}")
    try:
        validated = platform.DISCOVERY_SCHEMA(payload)
    except vol.Invalid as exc:
        return str(exc)
    dropped = sorted(set(payload) - set(validated) - {"platform"})  # platform: HA's own
    return f"keys ignored by this release: {dropped}" if dropped else None


def main() -> int:
    prefix = sys.argv[1] if len(sys.argv) > 1 else "homeassistant"
    messages = json.load(sys.stdin)
    discovery = _load()
    results = {topic: validate(topic, text, prefix, discovery) for topic, text in messages.items()}
    from homeassistant.const import __version__

    json.dump({"release": __version__, "results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
