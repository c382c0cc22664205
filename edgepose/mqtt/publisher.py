"""The paho-mqtt 2 adapter: connection lifecycle, Last Will, and non-blocking publishes.

paho's own network thread (loop_start) does all socket work, so `publish()` never blocks the
pipeline: it only queues. While the broker is unreachable paho keeps retrying with back-off
(reconnect_delay_set); QoS 0 messages published meanwhile are refused and counted here.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgepose.config import MqttConfig
from edgepose.mqtt.topics import STATUS_OFFLINE, STATUS_ONLINE, Topics

log = logging.getLogger(__name__)


@dataclass
class MqttStats:
    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    publish_refused: int = 0
    last_error: str | None = None


class MqttPublisher:
    def __init__(self, config: MqttConfig, topics: Topics, client_id: str, password: str | None) -> None:
        self.config = config
        self.topics = topics
        self.stats = MqttStats()
        self._retained_on_connect: dict[str, tuple[bytes, int]] = {}
        self._lock = threading.Lock()
        # Messages paho accepted and has not yet reported through on_publish (mid -> qos). on_publish
        # can run on paho's thread before publish() has returned here: such mids wait in _confirmed.
        self._in_flight: dict[int, int] = {}
        self._confirmed: set[int] = set()
        self._stopping = False
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if config.username:
            client.username_pw_set(config.username, password)
        if config.tls.enabled:
            client.tls_set(
                ca_certs=str(config.tls.ca_file) if config.tls.ca_file else None,
                certfile=str(config.tls.cert_file) if config.tls.cert_file else None,
                keyfile=str(config.tls.key_file) if config.tls.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.will_set(topics.status, STATUS_OFFLINE, qos=config.qos.status, retain=True)
        client.reconnect_delay_set(min_delay=int(max(1, config.reconnect_min_s)), max_delay=int(config.reconnect_max_s))
        client.max_queued_messages_set(config.max_queued_messages)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def start(self) -> None:
        """Connect in the background; returns at once even when the broker is down."""
        self._client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        self._client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self.stats.last_error = f"connect refused: {reason_code}"
            log.warning("MQTT broker %s refused the connection: %s", self.address, reason_code)
            return
        self.stats.connected = True
        self.stats.connects += 1
        log.info("MQTT connected to %s (connection %d)", self.address, self.stats.connects)
        self._send(self.topics.status, STATUS_ONLINE, self.config.qos.status, retain=True)
        with self._lock:
            pending = list(self._retained_on_connect.items())
        for topic, (payload, qos) in pending:
            self._send(topic, payload, qos, retain=True)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        was_connected = self.stats.connected
        self.stats.connected = False
        with self._lock:
            # paho drops QoS 0 messages still queued when a connection is lost (and keeps QoS 1/2 to resend).
            self._in_flight = {mid: qos for mid, qos in self._in_flight.items() if qos > 0}
        if was_connected and not self._stopping:
            self.stats.disconnects += 1
            self.stats.last_error = f"disconnected: {reason_code}"
            log.warning("MQTT disconnected from %s (%s); retrying with back-off", self.address, reason_code)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._lock:
            if self._in_flight.pop(mid, None) is None:
                self._confirmed.add(mid)

    def _send(
        self, topic: str, payload: bytes | str, qos: int, retain: bool = False
    ) -> tuple[bool, mqtt.MQTTMessageInfo]:
        """Every publish goes through here, so every message paho keeps is tracked until on_publish.

        True when paho kept the message: sent or queued, and also QoS 1/2 while disconnected
        (paho answers NO_CONN but keeps it for the next connection and reports it via on_publish).
        """
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        kept = info.rc == mqtt.MQTT_ERR_SUCCESS or (info.rc == mqtt.MQTT_ERR_NO_CONN and qos > 0)
        if kept:
            with self._lock:
                if info.mid in self._confirmed:
                    self._confirmed.discard(info.mid)
                else:
                    self._in_flight[info.mid] = qos
        return kept, info

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> bool:
        """Queue a message; False when paho refused it (disconnected at QoS 0, or queue full)."""
        kept, _ = self._send(topic, payload, qos, retain=retain)
        if not kept:
            self.stats.publish_refused += 1
            return False
        return True

    def publish_retained_state(self, topic: str, payload: bytes, qos: int) -> bool:
        """A retained state message (health) that is also re-sent on every reconnect."""
        with self._lock:
            self._retained_on_connect[topic] = (payload, qos)
        if not self.stats.connected:
            return False
        return self.publish(topic, payload, qos, retain=True)

    def queued(self) -> int:
        """Messages handed to paho and not yet sent (QoS 0) or acknowledged (QoS 1/2): lost on a crash."""
        with self._lock:
            return len(self._in_flight)

    def stop(self, timeout_s: float = 2.0) -> None:
        """Publish `offline`, flush what is queued, disconnect. Bounded by timeout_s."""
        deadline = time.monotonic() + timeout_s
        self._stopping = True
        if self.stats.connected:
            _, info = self._send(self.topics.status, STATUS_OFFLINE, self.config.qos.status, retain=True)
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (ValueError, RuntimeError) as exc:
                log.warning("MQTT: could not publish offline before shutdown: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()
        # paho closes its wake-up socket pair only when the client is garbage-collected; a stopped
        # publisher is never started again, so release them now (reinitialise is public and opens nothing).
        self._client.reinitialise()
