"""The small pure helpers of config.py, one by one: addresses, overrides, secrets, the machine id."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest
import yaml

from edgepose.config import (
    _allowed_keys,
    _LineIndex,
    default_device_id,
    is_loopback,
    listen_address,
    load_config,
    machine_suffix,
    parse_override,
    read_password,
    redact_override,
)
from edgepose.errors import ConfigError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:8080", ("::1", 8080)),
        ("[fe80::1:2]:80", ("fe80::1:2", 80)),
        ("pi.lan:1", ("pi.lan", 1)),
    ],
)
def test_listen_address_splits_host_and_port(value: str, expected: tuple[str, int]) -> None:
    assert listen_address(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("8080", "'8080' is not HOST:PORT (e.g. 127.0.0.1:8080 or 0.0.0.0:8080)"),
        (":8080", "':8080' is not HOST:PORT (e.g. 127.0.0.1:8080 or 0.0.0.0:8080)"),
        ("::1:8080", "'::1:8080': write an IPv6 address in brackets, e.g. [::1]:8080"),
        ("[::1:8080", "'[::1:8080': write an IPv6 address in brackets, e.g. [::1]:8080"),
        ("127.0.0.1:65536", "'127.0.0.1:65536': port must be 0..65535"),
        ("127.0.0.1:http", "'127.0.0.1:http': port must be 0..65535"),
        ("127.0.0.1:-1", "'127.0.0.1:-1': port must be 0..65535"),
    ],
)
def test_listen_address_names_what_is_wrong(value: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        listen_address(value)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("192.168.1.10", False),
        ("LOCALHOST", False),  # a name other than exactly localhost may resolve anywhere
        ("pi.lan", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_machine_suffix_from_the_first_valid_machine_id(tmp_path: Path) -> None:
    unreadable = tmp_path / "missing"
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" * 16)
    short = tmp_path / "short"
    short.write_text("abc123\n")
    upper = tmp_path / "upper"
    upper.write_text("0123456789ABCDEF0123456789ABCDEF\n")
    later = tmp_path / "later"
    later.write_text("fedcba98765432100123456789abcdef\n")
    assert machine_suffix([unreadable, binary, short, upper, later]) == "01234567"
    assert machine_suffix([unreadable, later]) == "fedcba98"
    assert machine_suffix([upper]) == "01234567"  # upper-case hex is accepted, and lowered
    assert machine_suffix([short]) == f"{uuid.getnode():012x}"[-8:]  # no valid id: the MAC address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mqtt.port=1884", ("mqtt.port", 1884)),
        (" mqtt.host = a=b", ("mqtt.host", " a=b")),
        ("camera.source=", ("camera.source", "")),
        ("camera.source=  ", ("camera.source", "")),
        ("model.smoothing.enabled=false", ("model.smoothing.enabled", False)),
        ("mqtt.host=[unclosed", ("mqtt.host", "[unclosed")),  # not YAML: kept as the text given
    ],
)
def test_parse_override(text: str, expected: tuple[str, object]) -> None:
    key, value = parse_override(text)
    assert key == expected[0]
    assert value == expected[1] or (isinstance(expected[1], str) and value == expected[1].strip())


@pytest.mark.parametrize("text", ["mqtt.port", "=1884", " =1884"])
def test_parse_override_needs_key_and_value(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_override(text)
    assert caught.value.problems == [f"--set {text}: expected KEY=VALUE, e.g. --set mqtt.port=1884"]


def test_a_malformed_secret_override_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_override("hunter2-mqtt-password")
    assert caught.value.problems == ["--set ***: expected KEY=VALUE, e.g. --set mqtt.port=1884"]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("mqtt.password=hunter2", "mqtt.password=***"),
        ("web.password_credential=web=pw", "web.password_credential=***"),
        ("mqtt.tls.key_data=abc", "mqtt.tls.key_data=***"),
        ("mqtt.port=1884", "mqtt.port=1884"),
        ("mqtt.host=my-password-server", "mqtt.host=my-password-server"),  # only the key decides
        ("api_token", "***"),  # no '=': the whole text may be the secret
        ("mqtt.port", "mqtt.port"),
    ],
)
def test_redact_override(text: str, shown: str) -> None:
    assert redact_override(text) == shown


def test_allowed_keys_follow_nested_sections_and_stop_at_a_value() -> None:
    assert "port" in _allowed_keys(["mqtt"]) and "tls" in _allowed_keys(["mqtt"])
    assert _allowed_keys(["mqtt", "tls"]) == sorted(_allowed_keys(["mqtt", "tls"]))
    assert "ca_file" in _allowed_keys(["mqtt", "tls"])
    assert _allowed_keys(["mqtt", "port"]) == []  # a value, not a section
    assert _allowed_keys(["nope"]) == []
    assert "camera" in _allowed_keys([])


def test_read_password_from_a_file_or_a_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\r\n")
    assert read_password(None, secret, "mqtt") == "s3cret"
    assert read_password(None, None, "mqtt") is None
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "mqtt_password").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    assert read_password("mqtt_password", secret, "mqtt") == "from-systemd"  # the credential wins
    (tmp_path / "creds" / "mqtt_password").write_text("\n")
    assert read_password("mqtt_password", None, "mqtt") is None  # the unit's empty fallback
    secret.write_text("  spaced  \n")
    assert read_password(None, secret, "web") == "  spaced  "  # only the line end is stripped


def test_read_password_errors_name_the_section_key_and_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(ConfigError) as caught:
        read_password(None, missing, "web")
    assert caught.value.problems == [f"{missing}:0: web.password_file: cannot read password: No such file or directory"]
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        read_password("nope", None, "mqtt")
    assert caught.value.problems == [
        f"{tmp_path / 'nope'}:0: mqtt.password_credential: cannot read password: No such file or directory"
    ]
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError) as caught:
        read_password("mqtt_password", None, "mqtt")
    assert caught.value.problems == [
        "(env):0: mqtt.password_credential: CREDENTIALS_DIRECTORY is not set; "
        "run under systemd with LoadCredential=mqtt_password:/path"
    ]


def test_the_mqtt_password_comes_from_the_mqtt_section(tmp_path: Path) -> None:
    from edgepose.config import MqttConfig, read_mqtt_password

    secret = tmp_path / "pw"
    secret.write_text("broker-pw\n")
    assert read_mqtt_password(MqttConfig(password_file=secret)) == "broker-pw"
    with pytest.raises(ConfigError, match=r":0: mqtt\.password_file: cannot read password"):
        read_mqtt_password(MqttConfig(password_file=tmp_path / "absent"))


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("pi-lab.local", "pi-lab"),
        ("My Host.lan", "My-Host"),
        ("cam_1", "cam_1"),
        ("Ünïcode", "-n-code"),
        ("", "edgepose-01234567"),  # no name at all: the project's name, made unique like a stock one
        ("raspberrypi", "raspberrypi-01234567"),
        ("RaspberryPi.home", "RaspberryPi-01234567"),  # stock names are matched without case
        ("dietpi", "dietpi-01234567"),
    ],
)
def test_default_device_id(hostname: str, expected: str, tmp_path: Path) -> None:
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    assert default_device_id(hostname, [machine_id]) == expected


def test_default_device_id_asks_the_system_for_the_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "kitchen-cam.lan")
    assert default_device_id() == "kitchen-cam"


def test_line_index_follows_mappings_and_sequences() -> None:
    text = "a:\n  b:\n    - x\n    - y: 1\n      z: 2\nc: 3\n"
    index = _LineIndex(yaml.compose(text))
    assert index.line_of([]) == 1
    assert index.line_of(["c"]) == 6
    assert index.line_of(["a", "b"]) == 2
    assert index.line_of(["a", "b", 0]) == 3
    assert index.line_of(["a", "b", 1, "z"]) == 5
    assert index.line_of(["a", "b", 9]) == 2  # past the end of the list: the list's own line
    assert index.line_of(["a", "b", 0, "deeper"]) == 3  # a scalar has no keys: its own line
    assert index.line_of(["a", "missing", "x"]) == 1  # an unknown key: the nearest known line
    assert index.line_of(["a", "b", "0"]) == 2  # a sequence is indexed by numbers only
    assert _LineIndex(None).line_of(["a"]) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # A merge key first must not stop the duplicate check of the keys after it.
        ("base: &b {x: 1}\nm:\n  <<: *b\n  y: 1\n  y: 2\n", ":5: (yaml): duplicate key 'y' (first given on line 4)"),
        # Nor must an unhashable key: the duplicate after it is still reported as one.
        ("? [1, 2]\n: v\nk: 1\nk: 2\n", ":4: (yaml): duplicate key 'k' (first given on line 3)"),
    ],
)
def test_duplicate_keys_are_found_past_merge_keys_and_unhashable_keys(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "edgepose.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [f"{path}{message}"]
