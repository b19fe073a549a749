"""TLS and credentials against a real Mosquitto, with a CA made here by the openssl binary."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from core.config_errors import ConfigError
from core.health import Health
from gateway.config.loader import parse_config
from gateway.config.schema import MqttCommandsConfig, MqttConfig, MqttTlsConfig
from gateway.ops.monitor import tls_context
from tests.fixtures.mosquitto import MosquittoBroker
from tests.gateway.ops.test_monitor import fast_monitor, mqtt_config, running, topic
from tests.helpers.eventually import eventually

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl binary is not installed")
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def openssl(*args: str | Path, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *map(str, args)], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class Pki:
    """A CA and the certificates it signed, as files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    openssl(
        "req", "-x509", *EC, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return directory / "ca.crt", directory / "ca.key"


def sign(directory: Path, name: str, usage: str, extra: str = "") -> tuple[Path, Path]:
    (directory / f"{name}.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={usage}\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        f"{extra}"
    )
    openssl(
        "req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.crt", directory / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, _ = make_ca(directory, "meter-gateway test CA")
    # The certificate names 127.0.0.1 only: connecting as "localhost" must fail verification.
    server_cert, server_key = sign(directory, "broker", "serverAuth", "subjectAltName=IP:127.0.0.1")
    client_cert, client_key = sign(directory, "gateway", "clientAuth")
    return Pki(ca, server_cert, server_key, client_cert, client_key)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ca(tmp_path_factory.mktemp("other-pki"), "someone else's CA")[0]


def tls_listener(pki: Pki, *, require_certificate: bool = False) -> str:
    lines = f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
    if require_certificate:
        lines += "require_certificate true\n"
    return lines


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(path), "gateway", "tls-Pa55word"],
        check=True,
        capture_output=True,
    )
    path.chmod(0o600)
    return path


async def retained_over_tls(broker: MosquittoBroker, pki: Pki, wanted: str) -> str:
    """What a verifying TLS client with a client certificate is handed for `wanted`."""
    context = tls_context(
        MqttTlsConfig(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    )
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        tls_context=context,
        username="gateway",
        password="tls-Pa55word",
        timeout=2,
    ) as client:
        await client.subscribe(wanted, qos=1)
        async with asyncio.timeout(2):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                return message.payload.decode()
    raise AssertionError("unreachable")


def test_tls_defaults_to_port_8883_unless_a_port_is_given() -> None:
    assert MqttConfig(host="broker", tls={}).port == 8883
    assert MqttConfig(host="broker", tls={}, port=9883).port == 9883
    assert MqttConfig(host="broker").port == 1883
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        MqttTlsConfig(cert_file=Path("gateway.crt"))


async def test_tls_with_a_client_certificate_and_a_password(
    pki: Pki,
    password_file: Path,
    mosquitto_factory: Callable[[str], MosquittoBroker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    broker = mosquitto_factory(
        tls_listener(pki, require_certificate=True)
        + f"allow_anonymous false\npassword_file {password_file}\n"
    )
    tls = MqttTlsConfig(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    config = mqtt_config(broker, tls=tls, username="gateway", password="tls-Pa55word")
    monitor = fast_monitor(config, Health())
    async with running(monitor):
        await eventually(lambda: monitor.connected, timeout=3.0)
        assert await retained_over_tls(broker, pki, topic("status")) == "online"
    assert "tls-Pa55word" not in caplog.text


async def test_without_its_client_certificate_the_gateway_is_refused(
    pki: Pki,
    mosquitto_factory: Callable[[str], MosquittoBroker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.ops.monitor")
    broker = mosquitto_factory(tls_listener(pki, require_certificate=True))
    # TLS 1.3: the broker's refusal arrives after the handshake and aiomqtt notices only when
    # no CONNACK came within timeout_secs.
    config = mqtt_config(broker, tls=MqttTlsConfig(ca_file=pki.ca), timeout_secs=0.5)
    monitor = fast_monitor(config, Health())
    async with running(monitor):
        await eventually(lambda: "unreachable" in caplog.text, timeout=3.0)
        assert not monitor.connected


@pytest.mark.parametrize("case", ["unknown CA", "wrong host name"])
async def test_a_broker_certificate_that_does_not_verify_is_refused(
    case: str,
    pki: Pki,
    other_ca: Path,
    mosquitto_factory: Callable[[str], MosquittoBroker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.ops.monitor")
    broker = mosquitto_factory(tls_listener(pki))
    if case == "unknown CA":
        config = mqtt_config(broker, tls=MqttTlsConfig(ca_file=other_ca))
    else:  # the right CA, but the certificate is for 127.0.0.1, not "localhost"
        config = mqtt_config(broker, host="localhost", tls=MqttTlsConfig(ca_file=pki.ca))
    monitor = fast_monitor(config, Health())
    async with running(monitor):
        await eventually(lambda: "certificate verify failed" in caplog.text, timeout=3.0)
        assert not monitor.connected


async def test_a_missing_ca_file_is_reported_and_retried_never_fatal(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.ops.monitor")
    config = mqtt_config(mosquitto, tls=MqttTlsConfig(ca_file=tmp_path / "missing-ca.crt"))
    monitor = fast_monitor(config, Health())
    async with running(monitor) as task:
        await eventually(lambda: "TLS set-up failed" in caplog.text, timeout=3.0)
        await asyncio.sleep(0.3)  # several more attempts
        assert not task.done()  # still trying: the data path is never taken down by MQTT
    assert caplog.text.count("TLS set-up failed") == 1  # logged once, then only counted


MQTT_YAML = """\
gateway: {id: site-42}
mqtt:
  host: broker.example.net
  username: gateway-site-42
  password: ${MQTT_PASSWORD}
  tls: {ca_file: /etc/meter-gateway/ca.crt}
  homeassistant_discovery: true
  commands:
    read: true
    raed: true
"""


def test_mqtt_section_from_yaml_typos_named_secrets_hidden() -> None:
    env = {"MQTT_PASSWORD": "yaml-Pa55"}
    with pytest.raises(ConfigError) as caught:
        parse_config(MQTT_YAML, "site.yaml", env)
    assert [str(p) for p in caught.value.problems] == [
        "site.yaml:10: mqtt.commands.raed: unknown key (check its spelling and "
        "docs/configuration.md)"
    ]
    config = parse_config(MQTT_YAML.replace("    raed: true\n", ""), "site.yaml", env)
    assert config.mqtt is not None
    assert config.mqtt.port == 8883  # TLS without a port
    assert config.mqtt.commands == MqttCommandsConfig(read=True)
    assert config.mqtt.tls == MqttTlsConfig(ca_file=Path("/etc/meter-gateway/ca.crt"))
    assert "yaml-Pa55" not in repr(config)
    with pytest.raises(ConfigError, match=r"s\.yaml:3: mqtt\.topic_prefix: "):
        parse_config(MQTT_YAML.replace("  host:", "  topic_prefix: a/#\n  host:"), "s.yaml", env)
