"""edgepose: camera frames -> MoveNet pose estimation -> MQTT, as a Raspberry Pi daemon."""

__version__ = "0.1.0"
