"""Topic names, in one place so the README, the publisher and the tests agree."""

from __future__ import annotations

from dataclasses import dataclass

STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"


@dataclass(frozen=True)
class Topics:
    base: str
    device_id: str

    @property
    def status(self) -> str:
        return f"{self.base}/{self.device_id}/status"

    @property
    def keypoints(self) -> str:
        return f"{self.base}/{self.device_id}/keypoints"

    @property
    def health(self) -> str:
        return f"{self.base}/{self.device_id}/health"

    @property
    def presence(self) -> str:
        return f"{self.base}/{self.device_id}/presence"

    @property
    def events(self) -> str:
        return f"{self.base}/{self.device_id}/events"

    @property
    def set(self) -> str:
        """Commands in (the only topic edgepose subscribes to, besides Home Assistant's status)."""
        return f"{self.base}/{self.device_id}/set"

    @property
    def set_result(self) -> str:
        return f"{self.base}/{self.device_id}/set/result"

    @property
    def state(self) -> str:
        return f"{self.base}/{self.device_id}/state"

    @property
    def snapshot(self) -> str:
        return f"{self.base}/{self.device_id}/snapshot"
