"""Remote-control commands on `<base>/<id>/set`: parsing, validation and the runtime settings they change.

Pure: bytes in, a `Command` or a one-line error out. The payload is untrusted network input, so
the size and UTF-8 are checked before json.loads sees it, json.loads refuses NaN/Infinity and
duplicate keys, the nesting depth is bounded, and only the documented keys with exact types pass. Nothing in a
payload is ever used as a path, a format string or a topic; error messages quote at most a short,
escaped key name, never the value.

Changes made by commands live until the daemon restarts or reloads: the YAML file stays the source of truth.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from edgepose.config import Config

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_DEPTH = 4  # {"model": {"smoothing": {"enabled": ...}}} is 3 deep
MAX_FPS_LIMIT = 1000.0
_KEY_QUOTE_CHARS = 40


class CommandError(ValueError):
    """A refused command; str() is the one-line reason sent back on `<base>/<id>/set/result`."""


class Detection(str, Enum):
    RUNNING = "running"
    PAUSED = "paused"


@dataclass(frozen=True)
class Command:
    """What one accepted payload asks for; None means "leave as it is"."""

    detection: Detection | None = None
    max_fps: float | None = None
    keypoints: bool | None = None
    score_threshold: float | None = None
    smoothing: bool | None = None
    snapshot: bool = False

    @property
    def changes_settings(self) -> bool:
        return any(
            v is not None for v in (self.detection, self.max_fps, self.keypoints, self.score_threshold, self.smoothing)
        )


@dataclass(frozen=True)
class RuntimeSettings:
    """The effective settings commands can change, published retained on `<base>/<id>/state`."""

    detection: Detection
    max_fps: float
    keypoints: bool
    score_threshold: float
    smoothing: bool

    @classmethod
    def from_config(cls, config: Config) -> RuntimeSettings:
        return cls(
            detection=Detection.RUNNING,
            max_fps=config.publish.max_fps,
            keypoints=config.publish.keypoints,
            score_threshold=config.model.score_threshold,
            smoothing=config.model.smoothing.enabled,
        )

    def apply(self, command: Command) -> RuntimeSettings:
        return replace(
            self,
            detection=command.detection if command.detection is not None else self.detection,
            max_fps=command.max_fps if command.max_fps is not None else self.max_fps,
            keypoints=command.keypoints if command.keypoints is not None else self.keypoints,
            score_threshold=command.score_threshold if command.score_threshold is not None else self.score_threshold,
            smoothing=command.smoothing if command.smoothing is not None else self.smoothing,
        )


# -- parsing --------------------------------------------------------------------------------------


def _quote_key(key: str) -> str:
    """A key name fit for a one-line error: escaped (no control characters) and short."""
    text = json.dumps(key, ensure_ascii=True)
    return text if len(text) <= _KEY_QUOTE_CHARS else text[: _KEY_QUOTE_CHARS - 4] + '..."'


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value: 0 for a scalar, 1 for a flat object or array."""
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _refuse_constant(name: str) -> Any:
    raise CommandError(f"{name} is not allowed: numbers must be finite")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise CommandError(f"duplicate key {_quote_key(key)}")
        result[key] = value
    return result


def decode_json(payload: bytes) -> Any:
    """The JSON value of a payload, or CommandError: size, encoding, syntax, non-finite numbers, depth."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandError(f"payload too large: {len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}")
    if not payload.strip():
        raise CommandError('empty payload: expected a JSON object such as {"detection": "pause"}')
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(f"payload is not valid UTF-8 (byte {exc.start})") from None
    try:
        # json's C scanner guards its recursion: thousands of "[" end in RecursionError, not a crash.
        value = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates)
    except CommandError:
        raise
    except json.JSONDecodeError as exc:
        raise CommandError(f"payload is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise CommandError(f"payload nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # int(...) beyond Python's digit limit
        raise CommandError(f"payload is not valid JSON: {str(exc)[:80]}") from None
    if _depth(value) > MAX_DEPTH:
        raise CommandError(f"payload nests deeper than {MAX_DEPTH} levels")
    return value


def _object(value: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CommandError(f"{where}: expected an object, got {_type_name(value)}")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        prefix = f"{where}." if where != "(command)" else ""
        raise CommandError(f"{prefix}{_quote_key(unknown[0])}: unknown key (allowed: {', '.join(allowed)})")
    if not value:
        raise CommandError(f"{where}: empty; expected one of {', '.join(allowed)}")
    return value


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise CommandError(f"{where}: expected true or false, got {_type_name(value)}")
    return value


def _number(value: Any, where: str, low: float, high: float) -> float:
    # bool is an int in Python: `true` is not a number here.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError(f"{where}: expected a number from {low:g} to {high:g}, got {_type_name(value)}")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise CommandError(f"{where}: must be from {low:g} to {high:g}")
    return number


TOP_KEYS = ("detection", "publish", "model", "snapshot")


def parse_command(payload: bytes) -> Command:
    """A validated Command, or CommandError with the reason."""
    data = _object(decode_json(payload), "(command)", TOP_KEYS)
    command = Command()
    if "detection" in data:
        value = data["detection"]
        if not isinstance(value, str) or value not in ("pause", "resume"):
            raise CommandError('detection: expected "pause" or "resume"')
        command = replace(command, detection=Detection.PAUSED if value == "pause" else Detection.RUNNING)
    if "publish" in data:
        publish = _object(data["publish"], "publish", ("max_fps", "keypoints"))
        if "max_fps" in publish:
            command = replace(command, max_fps=_number(publish["max_fps"], "publish.max_fps", 0.0, MAX_FPS_LIMIT))
        if "keypoints" in publish:
            command = replace(command, keypoints=_boolean(publish["keypoints"], "publish.keypoints"))
    if "model" in data:
        model = _object(data["model"], "model", ("score_threshold", "smoothing"))
        if "score_threshold" in model:
            threshold = _number(model["score_threshold"], "model.score_threshold", 0.0, 1.0)
            command = replace(command, score_threshold=threshold)
        if "smoothing" in model:
            smoothing = _object(model["smoothing"], "model.smoothing", ("enabled",))
            command = replace(command, smoothing=_boolean(smoothing["enabled"], "model.smoothing.enabled"))
    if "snapshot" in data:
        if data["snapshot"] is not True:
            raise CommandError("snapshot: expected true")
        command = replace(command, snapshot=True)
    return command
