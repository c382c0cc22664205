"""The small pure helpers of config.py, one by one: addresses, overrides, secrets, the machine id."""

from __future__ import annotations

import socket
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from edgepose.config import (
    MAX_CONFIG_BYTES,
    WebConfig,
    _allowed_keys,
    _check_readable,
    _dotted,
    _LineIndex,
    _ssl_reason,
    check_client_pair,
    default_config_path,
    default_device_id,
    is_loopback,
    listen_address,
    load_config,
    machine_suffix,
    parse_override,
    parse_source,
    read_password,
    read_web_password,
    redact_override,
)
from edgepose.errors import ConfigError
from tests.tlsfiles import TlsFiles, make_tls_files


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


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def test_client_pair_errors_name_the_files_and_the_reason(tls: TlsFiles, tmp_path: Path) -> None:
    check_client_pair(tls.client_cert, tls.client_key)  # a real pair loads
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "ec", "-in", str(tls.client_key), "-aes256", "-passout", "pass:x", "-out", str(encrypted)],
        check=True,
        capture_output=True,
    )
    with pytest.raises(ValueError) as caught:
        check_client_pair(tls.client_cert, encrypted)
    assert str(caught.value) == f"key_file {encrypted}: the key is encrypted; edgepose needs an unencrypted key"
    with pytest.raises(ValueError) as caught:
        check_client_pair(tls.client_cert, tls.other_key)
    assert str(caught.value) == f"key_file {tls.other_key} does not match cert_file {tls.client_cert}"
    with pytest.raises(ValueError) as caught:
        check_client_pair(tls.client_cert, None)
    assert str(caught.value).startswith(
        f"cert_file {tls.client_cert}: no private key in it and no key_file set, or not a PEM certificate ("
    )
    # The reason is OpenSSL's, lower case with spaces: "(pem lib)", "(no start line)" and the like.
    reason = str(caught.value).rsplit("(", 1)[1]
    assert reason == reason.lower() and "_" not in reason and reason.rstrip(")")
    with pytest.raises(ValueError) as caught:
        check_client_pair(tls.client_cert, tls.ca_cert)
    message = str(caught.value)
    assert message.startswith(f"cert_file {tls.client_cert} / key_file {tls.ca_cert}: not a PEM certificate and key (")
    assert message.rsplit("(", 1)[1] == message.rsplit("(", 1)[1].lower()


def test_ssl_reason_prefers_the_reason_then_the_error_text() -> None:
    with_reason = ssl.SSLError(1, "[SSL: KEY_VALUES_MISMATCH] key values mismatch")
    with_reason.reason = "KEY_VALUES_MISMATCH"  # type: ignore[misc]
    assert _ssl_reason(with_reason) == "key values mismatch"
    bare = ssl.SSLError(5, "EOF_IN_PEM")
    bare.reason = None  # type: ignore[misc]
    assert _ssl_reason(bare) == "eof in pem"
    text_only = ssl.SSLError("Just_Text")
    text_only.reason = None  # type: ignore[misc]
    assert _ssl_reason(text_only) == "('just text',)"  # no reason, no strerror: the exception's own text


def test_check_readable_names_key_path_and_reason(tmp_path: Path) -> None:
    a_file = tmp_path / "f"
    a_file.write_text("x")
    _check_readable("mqtt.tls.ca_file", a_file)
    with pytest.raises(ValueError) as caught:
        _check_readable("mqtt.tls.ca_file", a_file / "below-a-file")
    assert str(caught.value) == f"mqtt.tls.ca_file {a_file / 'below-a-file'}: Not a directory"
    with pytest.raises(ValueError) as caught:
        _check_readable("mqtt.tls.ca_file", tmp_path)
    assert str(caught.value) == f"mqtt.tls.ca_file {tmp_path}: not a regular file"


def test_config_file_read_errors_are_exact(tmp_path: Path) -> None:
    a_file = tmp_path / "f"
    a_file.write_text("x")
    below = a_file / "edgepose.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(below)
    assert caught.value.problems == [f"{below}:0: (file): cannot read: Not a directory"]
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.problems == [f"{tmp_path}:0: (file): is a directory, expected a YAML file"]
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"device_id: caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(latin1)
    assert caught.value.problems == [
        f"{latin1}:0: (file): cannot read: "
        "'utf-8' codec can't decode byte 0xe9 in position 14: invalid continuation byte"
    ]
    top_list = tmp_path / "list.yaml"
    top_list.write_text("- a\n- b\n")
    with pytest.raises(ConfigError) as caught:
        load_config(top_list)
    assert caught.value.problems == [f"{top_list}:1: (top level): expected a mapping of sections, got list"]


def test_a_config_of_exactly_the_size_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "edgepose.yaml"
    last = "\ndevice_id: at-limit-X"  # the file's very last byte is part of the value
    path.write_text("#" * (MAX_CONFIG_BYTES - len(last)) + last)
    assert path.stat().st_size == MAX_CONFIG_BYTES
    assert load_config(path)[0].device_id == "at-limit-X"


def test_default_config_path_is_the_first_that_exists(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import edgepose.config as config_module

    first, second, last = tmp_path / "etc.yaml", tmp_path / "repo.yaml", tmp_path / "last.yaml"
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATHS", (first, second, last))
    assert default_config_path() == last  # none exists: the last, for the error message
    second.write_text("{}\n")
    assert default_config_path() == second
    first.write_text("{}\n")
    assert default_config_path() == first


def test_dotted_key_paths() -> None:
    assert _dotted(["mqtt", "tls", "ca_file"]) == "mqtt.tls.ca_file"
    assert _dotted(["poses", 2]) == "poses.2"
    assert _dotted([]) == "(top level)"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"usb": 0}, "usb:0"),  # `--set camera.source=usb: 0` reads as a one-key mapping
        ({"images": "/x"}, "images:/x"),
        ({"kind": "usb", "index": 1}, {"kind": "usb", "index": 1}),
    ],
)
def test_parse_source_takes_one_key_mappings_as_the_string_meant(value: object, expected: object) -> None:
    parsed = parse_source(value)
    assert parsed == (parse_source(expected) if isinstance(expected, str) else expected)


@pytest.mark.parametrize("value", [{"file": "/x", "extra": 1}, {"webcam": 0}, {}])
def test_parse_source_refuses_other_mappings(value: object) -> None:
    with pytest.raises(ValueError) as caught:
        parse_source(value)
    assert str(caught.value).startswith(
        "expected one of auto, picamera2, demo"
    ) and "a mapping with a 'kind' key" in str(caught.value)


def test_web_password_comes_from_the_web_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("endsWithX\n")
    assert read_web_password(WebConfig(password_file=secret)) == "endsWithX"  # only \r and \n are stripped
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "web_password").write_text("from-systemd\r\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    assert read_web_password(WebConfig(password_credential="web_password")) == "from-systemd"
    with pytest.raises(ConfigError, match=r":0: web\.password_file: cannot read password"):
        read_web_password(WebConfig(password_file=tmp_path / "absent"))
