"""Command parsing: every documented command, every kind of bad input, and 10,000 fuzzed payloads."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from edgepose.commands import (
    MAX_PAYLOAD_BYTES,
    Command,
    CommandError,
    Detection,
    RuntimeSettings,
    parse_command,
)
from edgepose.config import Config
from edgepose.mqtt.events import result_payload, state_payload
from tests.test_payloads import load_schema


@pytest.mark.parametrize(
    ("payload", "command"),
    [
        ({"detection": "pause"}, Command(detection=Detection.PAUSED)),
        ({"detection": "resume"}, Command(detection=Detection.RUNNING)),
        ({"publish": {"max_fps": 5}}, Command(max_fps=5.0)),
        ({"publish": {"max_fps": 0.5, "keypoints": False}}, Command(max_fps=0.5, keypoints=False)),
        ({"model": {"score_threshold": 0.35}}, Command(score_threshold=0.35)),
        ({"model": {"smoothing": {"enabled": False}}}, Command(smoothing=False)),
        ({"snapshot": True}, Command(snapshot=True)),
        (
            {"detection": "pause", "publish": {"keypoints": True}, "model": {"score_threshold": 1}},
            Command(detection=Detection.PAUSED, keypoints=True, score_threshold=1.0),
        ),
    ],
)
def test_valid_commands(payload: dict[str, object], command: Command) -> None:
    raw = json.dumps(payload).encode()
    assert parse_command(raw) == command
    jsonschema.validate(payload, load_schema("set"))


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", "empty payload"),
        (b"   ", "empty payload"),
        (b"\xff\xfe{}", "not valid UTF-8 (byte 0)"),
        (b'{"detection": "pause"', "not valid JSON"),
        (b"[1, 2]", "(command): expected an object, got an array"),
        (b'"pause"', "(command): expected an object, got a string"),
        (b"{}", "(command): empty"),
        (b'{"detection": "stop"}', 'detection: expected "pause" or "resume"'),
        (b'{"detection": ["pause"]}', 'detection: expected "pause" or "resume"'),
        (b'{"detection": "pause", "detection": "resume"}', 'duplicate key "detection"'),
        (b'{"reboot": true}', '"reboot": unknown key (allowed: detection, publish, model, snapshot)'),
        (b'{"publish": {"topic": "x"}}', 'publish."topic": unknown key (allowed: max_fps, keypoints)'),
        (b'{"publish": {}}', "publish: empty"),
        (b'{"publish": 5}', "publish: expected an object, got a number"),
        (b'{"publish": {"max_fps": "5"}}', "publish.max_fps: expected a number from 0 to 1000, got a string"),
        (b'{"publish": {"max_fps": true}}', "publish.max_fps: expected a number from 0 to 1000, got a boolean"),
        (b'{"publish": {"max_fps": -1}}', "publish.max_fps: must be from 0 to 1000"),
        (b'{"publish": {"max_fps": 1e999}}', "publish.max_fps: must be from 0 to 1000"),
        (b'{"publish": {"max_fps": NaN}}', "NaN is not allowed"),
        (b'{"publish": {"max_fps": Infinity}}', "Infinity is not allowed"),
        (b'{"publish": {"max_fps": -Infinity}}', "-Infinity is not allowed"),
        (b'{"publish": {"keypoints": 1}}', "publish.keypoints: expected true or false, got a number"),
        (b'{"model": {"score_threshold": 1.5}}', "model.score_threshold: must be from 0 to 1"),
        (b'{"model": {"score_threshold": null}}', "model.score_threshold: expected a number from 0 to 1, got null"),
        (b'{"model": {"smoothing": true}}', "model.smoothing: expected an object, got a boolean"),
        (b'{"model": {"smoothing": {"enabled": "yes"}}}', "model.smoothing.enabled: expected true or false"),
        (b'{"model": {"smoothing": {"beta": 1}}}', 'model.smoothing."beta": unknown key (allowed: enabled)'),
        (b'{"model": {"name": "/etc/passwd"}}', 'model."name": unknown key'),
        (b'{"snapshot": false}', "snapshot: expected true"),
        (b'{"snapshot": "../../etc/shadow"}', "snapshot: expected true"),
        (b'{"snapshot": 1}', "snapshot: expected true"),
        (b"[" * 5 + b"]" * 5, "nests deeper than 4 levels"),
        (b"[" * 100_000, "payload too large"),
        (b"[" * 60_000, "nests deeper than 4 levels"),
        (b'{"a": "' + b"x" * (1 << 20) + b'"}', "payload too large: 1048585 bytes, the limit is 65536"),
        (b'{"publish": {"max_fps": ' + b"9" * 5000 + b"}}", "not valid JSON"),
    ],
)
def test_bad_commands_are_refused_with_a_reason(raw: bytes, error: str) -> None:
    with pytest.raises(CommandError) as caught:
        parse_command(raw)
    message = str(caught.value)
    assert error in message
    assert "\n" not in message and len(message) <= 200
    jsonschema.validate(result_payload(message), load_schema("set-result"))


def test_strings_inside_values_do_not_count_as_nesting() -> None:
    # Brackets inside a string are text, not depth; the payload is refused for its key instead.
    with pytest.raises(CommandError, match="unknown key"):
        parse_command(json.dumps({"x": '[[[[[[[[{{{{{{\\"' * 10}).encode())


def test_long_unknown_key_is_quoted_short_and_escaped() -> None:
    key = "\x1b[31m" + "k" * 500 + "\n"
    with pytest.raises(CommandError) as caught:
        parse_command(json.dumps({key: 1}).encode())
    message = str(caught.value)
    assert len(message) < 120 and "\x1b" not in message and "\n" not in message


def test_size_limit_is_exact() -> None:
    padding = MAX_PAYLOAD_BYTES - len(b'{"snapshot": true}')
    assert parse_command(b'{"snapshot": true}' + b" " * padding) == Command(snapshot=True)
    with pytest.raises(CommandError, match="too large"):
        parse_command(b'{"snapshot": true}' + b" " * (padding + 1))


def test_settings_follow_commands() -> None:
    settings = RuntimeSettings.from_config(Config())
    assert settings == RuntimeSettings(Detection.RUNNING, 0.0, True, 0.2, True)
    paused = settings.apply(parse_command(b'{"detection": "pause", "publish": {"max_fps": 2}}'))
    assert paused == RuntimeSettings(Detection.PAUSED, 2.0, True, 0.2, True)
    assert paused.apply(Command(snapshot=True)) == paused
    assert not Command(snapshot=True).changes_settings and Command(keypoints=False).changes_settings
    payload = state_payload("pi", paused, 1_700_000_000.0)
    jsonschema.validate(payload, load_schema("state"))
    assert payload["detection"] == "paused" and payload["publish"] == {"max_fps": 2.0, "keypoints": True}
    assert payload["persistent"] is False


def fuzz_payloads(count: int, seed: int = 12, big_every: int = 240) -> list[bytes]:
    """Random bytes, invalid UTF-8, truncated and deep JSON, 1 MB strings, NaN/Infinity,
    wrong types, unknown keys and path-like values, mixed with valid commands."""
    rng = random.Random(seed)
    valid = [
        {"detection": "pause"},
        {"detection": "resume"},
        {"publish": {"max_fps": 3, "keypoints": True}},
        {"model": {"score_threshold": 0.3, "smoothing": {"enabled": True}}},
        {"snapshot": True},
    ]
    values: list[object] = [
        None, True, False, 0, -1, 1e308, 3.5, "", "pause", "../../etc/passwd", "/dev/sda", "C:\\Windows",
        "$(reboot)", "%s%n", "\u0000", "😀" * 10, [], {}, [1, [2, [3]]], {"enabled": "true"},
    ]  # fmt: skip
    keys = ["detection", "publish", "model", "snapshot", "max_fps", "keypoints", "__proto__", "../x", "", "\u0000"]
    out: list[bytes] = []
    for index in range(count):
        kind = index % 12
        if kind == 0:
            out.append(rng.randbytes(rng.randint(0, 300)))
        elif kind == 1:
            out.append(b'{"detection": "' + rng.randbytes(8) + b'\xc3\x28"}')  # invalid UTF-8 inside a string
        elif kind == 2:
            text = json.dumps(rng.choice(valid)).encode()
            out.append(text[: rng.randint(0, len(text) - 1)])  # truncated
        elif kind == 3:
            depth = rng.choice([5, 50, 1000, 5000])
            out.append(b'{"model":' * depth + b"1" + b"}" * depth)
        elif kind == 4:
            # 1 MB strings now and then (refused on size alone), some just under the limit, most of 2 KB.
            size = 1 << 20 if index % big_every == 4 else MAX_PAYLOAD_BYTES - 40 if index % 48 == 4 else 2048
            out.append(b'{"publish": {"max_fps": "' + b"A" * size + b'"}}')
        elif kind == 5:
            constant = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"])
            out.append(b'{"model": {"score_threshold": ' + constant + b"}}")
        elif kind == 6:
            section = rng.choice(["detection", "publish", "model", "snapshot"])
            out.append(json.dumps({section: rng.choice(values)}).encode())
        elif kind == 7:
            out.append(json.dumps({"publish": {rng.choice(keys): rng.choice(values)}}).encode())
        elif kind == 8:
            out.append(json.dumps({rng.choice(keys): rng.choice(values) for _ in range(rng.randint(1, 4))}).encode())
        elif kind == 9:
            out.append(
                json.dumps({"model": {"name": rng.choice(["/etc/shadow", "../../../root/.ssh/id_rsa"])}}).encode()
            )
        elif kind == 10:
            out.append(json.dumps(rng.choice(valid)).encode())
        else:
            blob = bytearray(json.dumps(rng.choice(valid)).encode())
            for _ in range(rng.randint(1, 4)):
                blob[rng.randrange(len(blob))] = rng.randrange(256)  # bit rot
            out.append(bytes(blob))
    return out


def test_fuzz_ten_thousand_payloads_never_raise_anything_but_command_error() -> None:
    payloads = fuzz_payloads(10_000)
    accepted = refused = 0
    reasons: set[str] = set()
    messages: set[str] = set()
    results = jsonschema.Draft202012Validator(load_schema("set-result"))
    for raw in payloads:
        try:
            command = parse_command(raw)
        except CommandError as exc:
            refused += 1
            message = str(exc)
            assert message and "\n" not in message and len(message) <= 200, message
            reasons.add(message.split(":")[0])
            messages.add(message)
            continue
        accepted += 1
        assert isinstance(command, Command)
    for message in messages:
        results.validate(result_payload(message))
    assert accepted + refused == 10_000
    # Valid commands (and luckily valid bit rot) pass; everything else is refused.
    assert 800 <= accepted <= 1_200
    assert {
        "payload too large",
        "payload is not valid UTF-8 (byte 16)",
        "payload nests deeper than 4 levels",
        "payload is not valid JSON",
        "NaN is not allowed",
        "publish.max_fps",
        "model.score_threshold",
    } <= reasons
