"""The `http:` section: on by default on loopback; the site's network only with a secret."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config.schema import Config, HttpConfig

GATEWAY = {"id": "site-1"}


def test_the_status_page_is_on_by_default_on_loopback_port_8480() -> None:
    config = Config.model_validate({"gateway": GATEWAY})
    assert config.http.enabled is True
    assert config.http.host_port == ("127.0.0.1", 8480)
    assert config.http.secured is False


@pytest.mark.parametrize("listen", ["0.0.0.0:8480", "[::]:8480", "192.168.1.20:8480", "gw:80"])
def test_a_network_listen_without_a_secret_is_refused_with_what_to_do(listen: str) -> None:
    with pytest.raises(ValidationError) as caught:
        HttpConfig(listen=listen)
    assert "set a password or a token" in str(caught.value)


@pytest.mark.parametrize("secret", ["password", "token"])
def test_a_network_listen_with_a_long_enough_secret_is_accepted(secret: str) -> None:
    config = HttpConfig.model_validate({"listen": "0.0.0.0:8480", secret: "a-long-secret-1"})
    assert config.secured and config.host_port == ("0.0.0.0", 8480)


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 12 characters"):
        HttpConfig.model_validate({"listen": "0.0.0.0:8480", "token": "1234"})


@pytest.mark.parametrize("listen", ["8480", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:http"])
def test_a_malformed_listen_is_refused(listen: str) -> None:
    with pytest.raises(ValidationError):
        HttpConfig(listen=listen)


@pytest.mark.parametrize("listen", ["localhost:8480", "[::1]:8480", "127.0.0.5:0"])
def test_loopback_needs_no_secret(listen: str) -> None:
    assert HttpConfig(listen=listen).secured is False


def test_disabled_on_the_network_needs_no_secret() -> None:
    assert HttpConfig(enabled=False, listen="0.0.0.0:8480").enabled is False


def test_secrets_never_show_in_the_config_repr() -> None:
    config = HttpConfig.model_validate({"listen": "0.0.0.0:1", "password": "hunter2-hunter2"})
    assert "hunter2" not in repr(config)
