"""Run by a Python that has Home Assistant installed (`make test-ha`): validates edgepose's
discovery configs with Home Assistant's own code and renders their templates with its engine.

stdin:  {"prefix": str, "messages": [[topic, config]], "samples": {topic: payload text}}
stdout: {"problems": [str], "rendered": {"<component>/<object_id>/<key>": str}}
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import tempfile
from typing import Any

import voluptuous as vol
from homeassistant.components.mqtt import discovery
from homeassistant.components.mqtt.abbreviations import ABBREVIATIONS, DEVICE_ABBREVIATIONS
from homeassistant.const import __version__ as ha_version
from homeassistant.core import HomeAssistant
from homeassistant.helpers.template import Template


async def check(request: dict[str, Any]) -> dict[str, Any]:
    hass = HomeAssistant(tempfile.mkdtemp())
    problems: list[str] = []
    rendered: dict[str, str] = {}
    prefix = request["prefix"]
    for topic, config in request["messages"]:
        match = discovery.TOPIC_MATCHER.match(topic.replace(f"{prefix}/", "", 1))
        if not match:
            problems.append(f"{topic}: not a discovery topic Home Assistant accepts")
            continue
        component, _node_id, object_id = match.groups()
        if component not in discovery.SUPPORTED_COMPONENTS:
            problems.append(f"{topic}: unsupported component {component}")
            continue
        # What discovery.py does before validating: expand abbreviations (edgepose uses none).
        expanded = {ABBREVIATIONS.get(k, k): v for k, v in config.items()}
        if "device" in expanded:
            expanded["device"] = {DEVICE_ABBREVIATIONS.get(k, k): v for k, v in expanded["device"].items()}
        if expanded != config:
            problems.append(f"{topic}: uses abbreviations")
        platform = importlib.import_module(f"homeassistant.components.mqtt.{component}")
        strict = getattr(platform, "PLATFORM_SCHEMA_MODERN", None) or platform.PLATFORM_SCHEMA_BASE
        for name, schema in (("strict", strict), ("discovery", platform.DISCOVERY_SCHEMA)):
            try:
                schema(json.loads(json.dumps(expanded)))
            except vol.Invalid as exc:
                problems.append(f"{topic}: {name} schema: {exc}")
        for key in ("value_template", "command_template"):
            if key not in config:
                continue
            template = Template(config[key], hass)
            if key == "value_template":
                sample = request["samples"].get(config["state_topic"])
                if sample is None:
                    problems.append(f"{topic}: no sample payload for {config['state_topic']}")
                    continue
                value = template.async_render_with_possible_json_value(sample, "<error>")
            else:
                value = template.async_render({"value": 7.5}, parse_result=False)
            rendered[f"{component}/{object_id}/{key}"] = str(value)
    await hass.async_stop(force=True)
    return {"problems": problems, "rendered": rendered, "version": ha_version}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(check(json.load(sys.stdin)))))
