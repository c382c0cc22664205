"""Home Assistant discovery payloads, checked against Home Assistant's discovery rules.

The rules encoded here are those of homeassistant/components/mqtt (discovery.py TOPIC_MATCHER and
SUPPORTED_COMPONENTS; each platform's schema's Required keys; the device schema's "at least one
identifier"). `make test-ha` also runs them through Home Assistant's own schemas and template
engine (test_against_real_home_assistant), in a venv of its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from edgepose.commands import Command, RuntimeSettings, parse_command
from edgepose.config import Config
from edgepose.health import STAGES
from edgepose.mqtt.events import presence_payload, state_payload
from edgepose.mqtt.homeassistant import (
    DeviceInfo,
    discovery_configs,
    discovery_messages,
    node_id,
    read_topics,
)
from edgepose.mqtt.payloads import HealthReport, health_payload
from edgepose.mqtt.topics import Topics
from edgepose.presence import Presence
from tests.test_payloads import load_schema

# homeassistant/components/mqtt/discovery.py
TOPIC_MATCHER = re.compile(r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config")
# Required keys of each platform's schema (config.py MQTT_RO_SCHEMA / MQTT_RW_SCHEMA, button.py, camera.py).
REQUIRED = {
    "binary_sensor": {"state_topic"},
    "sensor": {"state_topic"},
    "switch": {"command_topic"},
    "number": {"command_topic"},
    "button": {"command_topic"},
    "camera": {"topic"},
}
# Every key each platform's schema knows (the union of MQTT_ENTITY_COMMON_SCHEMA and the platform's own).
COMMON_KEYS = {
    "availability_topic", "payload_available", "payload_not_available", "device", "origin", "unique_id",
    "entity_category", "icon", "json_attributes_topic", "name", "qos", "enabled_by_default",
}  # fmt: skip
PLATFORM_KEYS = {
    "binary_sensor": {"state_topic", "value_template", "device_class", "payload_on", "payload_off"},
    "sensor": {
        "state_topic", "value_template", "device_class", "unit_of_measurement", "state_class",
        "suggested_display_precision",
    },
    "switch": {"command_topic", "state_topic", "value_template", "payload_on", "payload_off", "state_on", "state_off"},
    "number": {
        "command_topic", "command_template", "state_topic", "value_template", "min", "max", "step", "mode",
        "unit_of_measurement",
    },
    "button": {"command_topic", "payload_press"},
    "camera": {"topic"},
}  # fmt: skip
PREFIX = "homeassistant"
TOPICS = Topics("edgepose", "pi.lab")
INFO = DeviceInfo("pi.lab", "movenet_lightning_int8", "0.1.0", "http://pi.local:8080/", 30.0)


def _messages(enabled: bool = True) -> list[tuple[str, dict[str, Any]]]:
    return [(m.topic, json.loads(m.payload)) for m in discovery_messages(INFO, TOPICS, PREFIX, enabled)]


def test_topics_follow_the_per_component_scheme() -> None:
    messages = _messages()
    assert len(messages) == 11
    seen = set()
    for topic, _ in messages:
        assert topic.startswith(f"{PREFIX}/")
        match = TOPIC_MATCHER.fullmatch(topic.removeprefix(f"{PREFIX}/"))
        assert match, topic
        component, node, object_id = match.groups()
        assert component in REQUIRED and node == "pi_lab"
        seen.add((component, object_id))
    assert seen == {
        ("binary_sensor", "presence"),
        ("sensor", "people"),
        ("sensor", "pose_score"),
        ("sensor", "inference_fps"),
        ("sensor", "latency_p50"),
        ("sensor", "cpu_temperature"),
        ("sensor", "state"),
        ("switch", "detection"),
        ("number", "keypoints_max_fps"),
        ("button", "take_snapshot"),
        ("camera", "snapshot"),
    }


@pytest.mark.parametrize(("device_id", "node"), [("pi-lab", "pi-lab"), ("pi.lab_2", "pi_lab_2"), ("a.b.c", "a_b_c")])
def test_node_id_is_what_home_assistant_accepts(device_id: str, node: str) -> None:
    assert node_id(device_id) == node


def test_required_and_known_keys_unique_ids_and_one_device() -> None:
    unique_ids = set()
    for topic, config in _messages():
        component = topic.split("/")[1]
        assert REQUIRED[component] <= set(config), topic
        unknown = set(config) - COMMON_KEYS - PLATFORM_KEYS[component]
        assert not unknown, f"{topic}: keys Home Assistant does not know: {unknown}"
        unique_ids.add(config["unique_id"])
        assert config["device"] == {
            "identifiers": ["edgepose_pi.lab"],
            "name": "edgepose pi.lab",
            "manufacturer": "edgepose",
            "model": "movenet_lightning_int8",
            "sw_version": "0.1.0",
            "configuration_url": "http://pi.local:8080/",
        }
        assert config["availability_topic"] == "edgepose/pi.lab/status"
        assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
        assert config["origin"]["name"] == "edgepose"
        for key, value in config.items():
            if key.endswith("topic"):
                assert not set(value) & {"+", "#", "\0"}, (topic, key)
    assert len(unique_ids) == 11


def test_no_configuration_url_without_a_live_view() -> None:
    info = DeviceInfo("pi", "m", "1", None, 30.0)
    for config in discovery_configs(info, Topics("edgepose", "pi")).values():
        assert "configuration_url" not in config["device"]


def test_discovery_false_publishes_empty_configs_on_the_same_topics() -> None:
    on = discovery_messages(INFO, TOPICS, PREFIX, True)
    off = discovery_messages(INFO, TOPICS, PREFIX, False)
    assert [m.topic for m in on] == [m.topic for m in off]
    assert all(m.payload == b"" for m in off) and all(m.payload for m in on)


def _health(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = dict(
        device_id="pi.lab", timestamp_s=1.7e9, uptime_s=5.0, version="0.1.0", state="running", state_reason=None,
        runtime="litert", runtime_version="1.0", backend="cpu", backend_reason=None, edgetpu_temp_c=None,
        model="movenet_lightning_int8", source="demo", num_threads=2,
        fps={"capture": 30.0, "inference": 29.5, "published": 29.5},
        latency_ms={
            "inference": {"p50": 9.0, "p95": 11.0}, "capture_to_publish": {"p50": 21.5, "p95": 30.0},
            "frame_age_at_inference": {"p50": 1.0, "p95": 2.0},
            "stages": {s: {"p50": 1.0, "p95": 2.0} for s in STAGES},
        },
        counters={k: 0 for k in load_schema("health")["properties"]["counters"]["required"]},
        mqtt={"connected": True, "reconnects": 0, "queued": 0, "not_published": 0, "last_error": None},
        system={"cpu_percent": 50.0, "memory_rss_mb": 80.0, "load1": 1.0, "cpu_temp_c": 48.3},
        pose_score=0.61,
    )  # fmt: skip
    fields.update(overrides)
    payload = health_payload(HealthReport(**fields))
    jsonschema.validate(payload, load_schema("health"))
    return payload


def _samples() -> dict[str, str]:
    settings = RuntimeSettings.from_config(Config())
    return {
        TOPICS.presence: json.dumps(presence_payload("pi.lab", Presence(True, 2, 1.7e9))),
        TOPICS.health: json.dumps(_health()),
        TOPICS.state: json.dumps(state_payload("pi.lab", settings.apply(Command(max_fps=7.5)), 1.7e9)),
    }


def _resolve(template: str, payload: dict[str, Any]) -> Any:
    """`{{ value_json.a.b }}` -> payload["a"]["b"] (the form every edgepose sensor uses)."""
    match = re.fullmatch(r"\{\{ value_json((?:\.\w+)+) \}\}", template)
    assert match, template
    value: Any = payload
    for part in match.group(1).strip(".").split("."):
        value = value[part]
    return value


def test_every_read_topic_is_an_edgepose_topic_and_every_template_finds_its_field() -> None:
    published = {TOPICS.presence, TOPICS.health, TOPICS.state, TOPICS.snapshot, TOPICS.status}
    samples = {topic: json.loads(text) for topic, text in _samples().items()}
    for topic, config in _messages():
        assert read_topics(config) <= published, topic
        template = config.get("value_template")
        if template is None or "'ON'" in template:
            continue
        value = _resolve(template, samples[config["state_topic"]])
        if config.get("state_class") == "measurement" or topic.split("/")[1] == "number":
            assert isinstance(value, int | float) and not isinstance(value, bool), (topic, value)


def test_commands_from_home_assistant_parse() -> None:
    configs = discovery_configs(INFO, TOPICS)
    switch = configs[("switch", "detection")]
    assert parse_command(switch["payload_on"].encode()) == parse_command(b'{"detection": "resume"}')
    assert parse_command(switch["payload_off"].encode()) == parse_command(b'{"detection": "pause"}')
    assert parse_command(configs[("button", "take_snapshot")]["payload_press"].encode()) == Command(snapshot=True)
    number = configs[("number", "keypoints_max_fps")]
    rendered = number["command_template"].replace("{{ value }}", "12.5")
    assert parse_command(rendered.encode()) == Command(max_fps=12.5)
    assert number["max"] == 30.0 and number["min"] == 0


HA_PYTHON = os.environ.get("EDGEPOSE_HA_PYTHON")


@pytest.mark.skipif(not HA_PYTHON, reason="opt-in: `make test-ha` installs Home Assistant in .venv-ha")
def test_against_real_home_assistant() -> None:
    assert HA_PYTHON is not None
    request = {"prefix": PREFIX, "messages": _messages(), "samples": _samples()}
    checker = Path(__file__).parent / "ha" / "check_discovery.py"
    result = subprocess.run(
        [HA_PYTHON, str(checker)], input=json.dumps(request), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["problems"] == []
    rendered = report["rendered"]
    assert rendered["binary_sensor/presence/value_template"] == "ON"
    assert rendered["sensor/people/value_template"] == "2"
    assert rendered["sensor/pose_score/value_template"] == "0.61"
    assert rendered["sensor/inference_fps/value_template"] == "29.5"
    assert rendered["sensor/latency_p50/value_template"] == "21.5"
    assert rendered["sensor/cpu_temperature/value_template"] == "48.3"
    assert rendered["sensor/state/value_template"] == "running"
    assert rendered["switch/detection/value_template"] == "running"
    assert rendered["number/keypoints_max_fps/value_template"] == "7.5"
    # Home Assistant's number renders the command template; edgepose must accept what it sends.
    assert parse_command(rendered["number/keypoints_max_fps/command_template"].encode()) == Command(max_fps=7.5)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("homeassistant.prefix=home/#", "homeassistant.prefix: must not contain + or #"),
        ("homeassistant.prefix=/ha", "homeassistant.prefix: must not contain + or #"),
        ("presence.enter_frames=0", "presence.enter_frames: Input should be greater than or equal to 1"),
        ("presence.leave_s=0", "presence.leave_s: Input should be greater than 0"),
        ("events.fall.down_s=-1", "events.fall.down_s: Input should be greater than 0"),
        ("commands.rate_per_s=0", "commands.rate_per_s: Input should be greater than 0"),
        ("commands.reply=true", "commands.reply: unknown key (allowed in commands: burst, enabled, rate_per_s)"),
    ],
)
def test_config_keys_are_validated(override: str, key: str) -> None:
    from edgepose.config import load_config
    from edgepose.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert any(key in problem for problem in caught.value.problems), caught.value.problems


def test_config_defaults() -> None:
    config = Config()
    assert (config.presence.enter_frames, config.presence.leave_s) == (3, 5.0)
    assert (config.events.fall.enabled, config.events.fall.down_s) == (False, 3.0)
    assert (config.homeassistant.discovery, config.homeassistant.prefix) == (True, "homeassistant")
    assert (config.commands.enabled, config.commands.rate_per_s, config.commands.burst) == (True, 5.0, 20)


@pytest.mark.parametrize(
    ("web", "url"),
    [
        ({"enabled": False}, None),
        ({"listen": "127.0.0.1:8080"}, None),
        ({"listen": "192.168.1.20:8080", "allow_anonymous": True}, "http://192.168.1.20:8080/"),
        ({"listen": "[fd00::20]:8081", "allow_anonymous": True}, "http://[fd00::20]:8081/"),
    ],
)
def test_configuration_url_is_the_live_view_when_reachable(web: dict[str, Any], url: str | None) -> None:
    from edgepose.parts import live_view_url

    assert live_view_url(Config.model_validate({"web": web})) == url


def test_configuration_url_on_all_interfaces_names_the_host() -> None:
    import socket

    from edgepose.parts import live_view_url

    config = Config.model_validate({"web": {"listen": "0.0.0.0:8080", "allow_anonymous": True}})
    assert live_view_url(config) == f"http://{socket.gethostname()}:8080/"
