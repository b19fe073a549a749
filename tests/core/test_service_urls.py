"""Every cloud's URL in config: https only (plain http to loopback alone), never credentials.

The Wattics document: "Non-secure requests are automatically rejected"; MTS: "only available
over HTTPS". A key sent in the clear on a site network is a key given away, and a
`user:pass@` in a URL ends up in logs; both are refused when the config is loaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config_base import service_url
from core.config_errors import ConfigError
from gateway.config.loader import load_config

BASE = """\
gateway: {id: site, data_dir: /tmp/x}
"""

SECTIONS = {
    "wattics": "uplinks:\n  wattics: {url: URL, username: u, password: p}\n",
    "enerkey": "uplinks:\n  enerkey: {base_url: URL, api_keys: [k], meters: {}}\n",
    "pts": "uplinks:\n  pts: {base_url: URL, subscription_key: k, systems: {}}\n",
    "mts": "sources:\n  mts: {base_url: URL, token: t, meters: {}}\n",
    "locus": (
        "sources:\n  locus: {base_url: URL, client_id: a, client_secret: b, username: c, "
        "password: d, meters: {}}\n"
    ),
}


@pytest.mark.parametrize("url", ["https://example.com/x", "http://127.0.0.1:8080/x",
                                 "http://localhost/x", "http://[::1]:9/x"])  # fmt: skip
def test_https_or_loopback_http_is_accepted(url: str) -> None:
    assert service_url(url) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://example.com/x", "must be https://"),
        ("http://10.0.0.5/x", "must be https://"),
        ("ftp://example.com/x", "must be an https:// URL"),
        ("https://user:secret@example.com/x", "must not contain credentials"),
        ("https:///nohost", "must be an https:// URL"),
    ],
)
def test_plain_http_and_credentials_are_refused(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        service_url(url)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_cloud_section_refuses_plain_http(tmp_path: Path, section: str) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(BASE + SECTIONS[section].replace("URL", "http://cloud.example.com/api"))
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    found = [str(p) for p in caught.value.problems]
    assert any("url: must be https://" in p for p in found), found


def test_a_url_with_credentials_never_shows_them_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    url = "https://someone:hunter2-secret@web-collector.wattics.com/x"
    path.write_text(BASE + SECTIONS["wattics"].replace("URL", url))
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    text = str(caught.value)
    assert "must not contain credentials" in text
    assert "hunter2" not in text
