"""Home Assistant MQTT discovery: the config payloads for one edgepose device (pure).

Follows Home Assistant's MQTT discovery rules (homeassistant/components/mqtt/discovery.py and
each platform's DISCOVERY_SCHEMA): per-component topics `<prefix>/<component>/<node_id>/<object_id>/config`
with node_id and object_id in [a-zA-Z0-9_-]; full key names (no abbreviations, so the payloads
read like the documentation); a unique_id on every entity so they join one device; the device
identified by `edgepose_<device_id>`; availability from edgepose's retained status topic.
An empty retained payload on the same topic removes the entity.

Every topic an entity reads is one edgepose publishes: presence (retained, on change), health
(retained, every health.interval_s), state (retained, on change) and snapshot (on request).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from edgepose.mqtt.topics import STATUS_OFFLINE, STATUS_ONLINE, Topics

PAYLOAD_ONLINE = "online"  # what Home Assistant publishes on <prefix>/status when it (re)starts
SWITCH_ON = json.dumps({"detection": "resume"}, separators=(",", ":"))
SWITCH_OFF = json.dumps({"detection": "pause"}, separators=(",", ":"))
SNAPSHOT_PRESS = json.dumps({"snapshot": True}, separators=(",", ":"))
MAX_FPS_TEMPLATE = '{"publish":{"max_fps":{{ value }}}}'

_NOT_ID = re.compile(r"[^a-zA-Z0-9_-]")


def node_id(device_id: str) -> str:
    """device_id as Home Assistant accepts it in a discovery topic ('.' is allowed in ours, not there)."""
    return _NOT_ID.sub("_", device_id)


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    model: str
    sw_version: str
    configuration_url: str | None  # the live view, when it is enabled
    max_fps: float  # the number entity's upper bound: the camera's frame rate


@dataclass(frozen=True)
class DiscoveryMessage:
    topic: str
    payload: bytes  # b"" removes the entity


def status_topic(prefix: str) -> str:
    return f"{prefix}/status"


def _device(info: DeviceInfo) -> dict[str, Any]:
    device: dict[str, Any] = {
        "identifiers": [f"edgepose_{info.device_id}"],
        "name": f"edgepose {info.device_id}",
        "manufacturer": "edgepose",
        "model": info.model,
        "sw_version": info.sw_version,
    }
    if info.configuration_url:
        device["configuration_url"] = info.configuration_url
    return device


def discovery_configs(info: DeviceInfo, topics: Topics) -> dict[tuple[str, str], dict[str, Any]]:
    """(component, object_id) -> config, for every entity of the device."""
    diagnostic = {"entity_category": "diagnostic"}
    health = topics.health
    entities: dict[tuple[str, str], dict[str, Any]] = {
        ("binary_sensor", "presence"): {
            "name": "Person present",
            "device_class": "occupancy",
            "state_topic": topics.presence,
            "value_template": "{{ 'ON' if value_json.present else 'OFF' }}",
            "json_attributes_topic": topics.presence,
        },
        ("sensor", "people"): {
            "name": "People",
            "icon": "mdi:account-group",
            "state_topic": topics.presence,
            "value_template": "{{ value_json.people }}",
            "state_class": "measurement",
        },
        ("sensor", "pose_score"): {
            "name": "Pose score",
            "icon": "mdi:human",
            "state_topic": health,
            "value_template": "{{ value_json.pose_score }}",
            "state_class": "measurement",
            "suggested_display_precision": 2,
            **diagnostic,
        },
        ("sensor", "inference_fps"): {
            "name": "Inference rate",
            "icon": "mdi:speedometer",
            "state_topic": health,
            "value_template": "{{ value_json.fps.inference }}",
            "unit_of_measurement": "fps",
            "state_class": "measurement",
            "suggested_display_precision": 1,
            **diagnostic,
        },
        ("sensor", "latency_p50"): {
            "name": "Latency p50",
            "device_class": "duration",
            "state_topic": health,
            "value_template": "{{ value_json.latency_ms.capture_to_publish.p50 }}",
            "unit_of_measurement": "ms",
            "state_class": "measurement",
            "suggested_display_precision": 1,
            **diagnostic,
        },
        ("sensor", "cpu_temperature"): {
            "name": "CPU temperature",
            "device_class": "temperature",
            "state_topic": health,
            "value_template": "{{ value_json.system.cpu_temp_c }}",
            "unit_of_measurement": "°C",
            "state_class": "measurement",
            **diagnostic,
        },
        ("sensor", "state"): {
            "name": "State",
            "icon": "mdi:state-machine",
            "state_topic": health,
            "value_template": "{{ value_json.state }}",
            **diagnostic,
        },
        ("switch", "detection"): {
            "name": "Detection",
            "icon": "mdi:motion-sensor",
            "command_topic": topics.set,
            "payload_on": SWITCH_ON,
            "payload_off": SWITCH_OFF,
            "state_topic": topics.state,
            "value_template": "{{ value_json.detection }}",
            "state_on": "running",
            "state_off": "paused",
            "qos": 1,
            "entity_category": "config",
        },
        ("number", "keypoints_max_fps"): {
            "name": "Keypoints publish rate",
            "icon": "mdi:speedometer-medium",
            "command_topic": topics.set,
            "command_template": MAX_FPS_TEMPLATE,
            "state_topic": topics.state,
            "value_template": "{{ value_json.publish.max_fps }}",
            "min": 0,
            "max": max(1.0, float(info.max_fps)),
            "step": 0.5,
            "mode": "box",
            "unit_of_measurement": "fps",
            "qos": 1,
            "entity_category": "config",
        },
        ("button", "take_snapshot"): {
            "name": "Snapshot",
            "icon": "mdi:camera",
            "command_topic": topics.set,
            "payload_press": SNAPSHOT_PRESS,
            "qos": 1,
        },
        ("camera", "snapshot"): {
            "name": "Snapshot",
            "topic": topics.snapshot,
        },
    }
    node = node_id(info.device_id)
    common = {
        "availability_topic": topics.status,
        "payload_available": STATUS_ONLINE,
        "payload_not_available": STATUS_OFFLINE,
        "device": _device(info),
        "origin": {"name": "edgepose", "sw_version": info.sw_version},
    }
    return {key: {**config, "unique_id": f"edgepose_{node}_{key[1]}", **common} for key, config in entities.items()}


def config_topic(prefix: str, component: str, device_id: str, object_id: str) -> str:
    return f"{prefix}/{component}/{node_id(device_id)}/{object_id}/config"


def discovery_messages(info: DeviceInfo, topics: Topics, prefix: str, enabled: bool) -> list[DiscoveryMessage]:
    """The retained config messages; with `enabled` False, the empty ones that remove the entities."""
    messages = []
    for (component, object_id), config in discovery_configs(info, topics).items():
        payload = json.dumps(config, separators=(",", ":"), ensure_ascii=False).encode() if enabled else b""
        messages.append(DiscoveryMessage(config_topic(prefix, component, info.device_id, object_id), payload))
    return messages


def read_topics(config: dict[str, Any]) -> set[str]:
    """The topics an entity config reads from (state, attributes, camera image, availability)."""
    keys = ("state_topic", "json_attributes_topic", "topic", "availability_topic")
    return {config[key] for key in keys if key in config}
