"""Secrets never reach the status document, and masking them never breaks its shape."""

from __future__ import annotations

from core.redact import Redactor
from gateway.config.redaction import secret_values
from gateway.config.schema import Config


def test_a_short_secret_that_is_also_a_key_name_masks_values_not_the_shape() -> None:
    """A Wattics user called "gateway" once masked the document's `gateway` key (KeyError)."""
    doc = {"gateway": {"id": "gateway", "note": "meter-gateway"}, "n": float("nan")}
    assert Redactor(["gateway"]).value(doc) == {
        "gateway": {"id": "***", "note": "meter-gateway"},
        "n": None,
    }


def test_a_long_secret_is_masked_inside_any_text_keys_included() -> None:
    secret = "pw-Zq81-never-shown"
    doc = {"alerts": [f"echoed {secret}!"], f"k-{secret}": 1}
    assert Redactor([secret]).value(doc) == {"alerts": ["echoed ***!"], "k-***": 1}


def test_every_secret_of_a_config_is_found() -> None:
    config = Config.model_validate(
        {
            "gateway": {"id": "site-1"},
            "mqtt": {"host": "broker", "password": "mqtt-secret-1"},
            "http": {"listen": "0.0.0.0:8480", "token": "token-secret-12"},
        }
    )
    assert set(secret_values(config)) == {"mqtt-secret-1", "token-secret-12"}
