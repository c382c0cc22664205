from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgepose.config import (
    AutoSpec,
    Config,
    DemoSpec,
    FileSpec,
    ImagesSpec,
    Picamera2Spec,
    SyntheticSpec,
    UsbSpec,
    V4l2Spec,
    load_config,
)
from edgepose.errors import EXIT_CONFIG, ConfigError
from tests.conftest import REPO, run_edgepose

LINE_FORMAT = re.compile(r"^edgepose: config error: (?P<file>[^:]+):(?P<line>\d+): (?P<key>[\w.()]+): (?P<msg>.+)$")


def _problems(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> list[str]:
    path = tmp_path / "edgepose.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value.problems


def test_shipped_config_is_valid_and_matches_defaults() -> None:
    config, _ = load_config(REPO / "config" / "edgepose.yaml")
    defaults = Config()
    # The shipped file documents the defaults: only device_id (hostname) differs by machine.
    assert config.model_dump(exclude={"device_id"}) == defaults.model_dump(exclude={"device_id"})


def test_unknown_key_names_file_line_and_key(tmp_path: Path) -> None:
    problems = _problems(tmp_path, "camera:\n  width: 640\n  widht: 320\n")
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'edgepose.yaml'}:3: camera.widht: unknown key")
    assert "width" in problems[0]


def test_wrong_type_and_range_each_reported_on_their_line(tmp_path: Path) -> None:
    problems = _problems(tmp_path, "device_id: pi\nmqtt:\n  port: abc\n  qos:\n    keypoints: 3\n")
    assert [p.split(": ")[0].rsplit(":", 1)[1] for p in problems] == ["3", "5"]
    assert "mqtt.port" in problems[0] and "mqtt.qos.keypoints" in problems[1]


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("camera:\n  source: demo\n  width: 640: 480\n  fps: 5\n", 3, "mapping values are not allowed here"),
        ("camera:\n  source: demo\n\twidth: 640\nmodel: {}\n", 3, "found character '\\t' that cannot start any token"),
        ("mqtt:\n  host: x\ncamera:\n  width: [640\n  height: 480\n", 5, "expected ',' or ']', but got ':'"),
        # Only the end of the file shows the problem: the line that opened the quote or bracket is reported.
        ('device_id: pi\ncamera:\n  source: "demo\n  width: 640\n', 3, "found unexpected end of stream"),
        ("camera:\n  source: demo\n  width: [640\n", 3, "expected ',' or ']', but got '<stream end>'"),
    ],
)
def test_bad_yaml_reports_the_exact_line(tmp_path: Path, text: str, line: int, problem: str) -> None:
    (message,) = _problems(tmp_path, text)
    assert message == f"{tmp_path / 'edgepose.yaml'}:{line}: (yaml): {problem}"


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    assert ":1: (top level): expected a mapping" in _problems(tmp_path, "- a\n- b\n")[0]


def test_unknown_source_rejected(tmp_path: Path) -> None:
    assert "camera.source: unknown source 'webcam'" in _problems(tmp_path, "camera:\n  source: webcam\n")[0]


def test_overrides_are_typed_and_validated() -> None:
    config, _ = load_config(None, ["mqtt.port=1884", "camera.source=file:/x.mp4", "model.smoothing.enabled=false"])
    assert config.mqtt.port == 1884
    assert config.camera.source == FileSpec(path=Path("/x.mp4"))
    assert str(config.camera.source) == "file:/x.mp4"
    assert config.model.smoothing.enabled is False
    with pytest.raises(ConfigError) as info:
        load_config(None, ["mqtt.port=notaport"])
    assert info.value.problems[0].startswith("--set mqtt.port=notaport: mqtt.port: ")


def test_override_of_unknown_key_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["mqtt.hots=x"])
    assert info.value.problems[0].startswith("--set mqtt.hots=x: mqtt.hots: unknown key")


@pytest.mark.parametrize(
    ("content", "expected_key"),
    [
        ("camera:\n  nope: 1\n", "camera.nope"),
        ("mqtt:\n  port: [1]\n", "mqtt.port"),
        ("camera: [\n", "(yaml)"),
    ],
)
def test_cli_exits_78_with_one_line_per_problem(
    tmp_path: Path, model_dir: Path, content: str, expected_key: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    for command in (["run", "-c", str(path)], ["config", "check", str(path)]):
        result = run_edgepose(*command, model_dir=model_dir, timeout_s=30)
        assert result.returncode == EXIT_CONFIG, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("edgepose:")]
        assert lines, result.stderr
        match = LINE_FORMAT.match(lines[0])
        assert match and match["file"] == str(path) and match["key"] == expected_key, lines
        assert "Traceback" not in result.stderr


def test_cli_missing_file_exits_78(tmp_path: Path, model_dir: Path) -> None:
    result = run_edgepose("run", "-c", str(tmp_path / "absent.yaml"), model_dir=model_dir, timeout_s=30)
    assert result.returncode == EXIT_CONFIG
    assert f"edgepose: config error: {tmp_path / 'absent.yaml'}:0: (file): config file not found" in result.stderr


def test_cli_config_check_ok(model_dir: Path) -> None:
    path = REPO / "config" / "edgepose.yaml"
    result = run_edgepose("config", "check", str(path), model_dir=model_dir, timeout_s=30)
    assert result.returncode == 0
    assert result.stdout.strip() == f"OK {path}"


def test_mqtt_password_from_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgepose.config import read_mqtt_password

    (tmp_path / "mqtt_password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config, _ = load_config(None, ["mqtt.password_credential=mqtt_password"])
    assert read_mqtt_password(config.mqtt) == "s3cret"
    (tmp_path / "mqtt_password").write_text("\n")  # the unit's SetCredential= fallback: no password
    assert read_mqtt_password(config.mqtt) is None
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY is not set"):
        read_mqtt_password(config.mqtt)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auto", AutoSpec()),
        ("picamera2", Picamera2Spec()),
        ("demo", DemoSpec()),
        ("synthetic", SyntheticSpec()),
        ("synthetic:0.25", SyntheticSpec(fps=0.25)),
        ("file:/x/clip.mp4", FileSpec(path=Path("/x/clip.mp4"))),
        ("images:/x/*.jpg", ImagesSpec(pattern="/x/*.jpg")),
        ("v4l2:/dev/video2", V4l2Spec(device="/dev/video2")),
        ("usb:1", UsbSpec(index=1)),
        ("{kind: usb, index: 1}", UsbSpec(index=1)),
    ],
)
def test_camera_source_is_parsed_once_into_a_typed_value(text: str, expected: object) -> None:
    config, _ = load_config(None, [f"camera.source={text}"])
    assert config.camera.source == expected
    if not text.startswith("{"):
        assert str(config.camera.source) == text  # the string form round-trips for logs and docs


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("usb:x", "usb:x: expected a camera index such as usb:0"),
        ("synthetic:fast", "'synthetic:fast': expected frames per second, e.g. synthetic:30"),
        ("synthetic:0", "camera.source.synthetic.fps: Input should be greater than 0"),
        ("demo:x", "'demo:x': demo takes no value after a colon"),
        ("file", "'file' needs a value after a colon, e.g. file:/path/to/video.mp4"),
        ("images:", "'images:' needs a value after the colon"),
    ],
)
def test_bad_camera_source_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"camera.source={text}"])
    assert message in info.value.problems[0], info.value.problems
