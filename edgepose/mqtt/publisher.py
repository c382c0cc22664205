"""The paho-mqtt 2 adapter: connection lifecycle, reasons for failures, honest delivery accounting.

`publish()` writes a QoS 0 message to the socket in the calling thread, without waking another
thread; a thread of ours (edgepose.mqtt.netloop, paho's external-loop API) reads, keeps the
connection alive and reconnects. `publish()` still never blocks the pipeline: it never waits for
that thread, a connect or the broker. Everything here goes through paho's public API and callbacks:

* Reconnect timing is ours: paho's own wait cannot be jittered and sleeps in 1 s steps, so paho's
  delay is set to 0 and `on_pre_connect` (called before every attempt, in paho's thread, while
  there is no connection to serve) waits a jittered back-off that a stop interrupts at once.
* Every failed attempt gets a reason in words (`on_connect_fail`, `on_connect`, `on_disconnect`):
  TLS errors are caught where they happen by the SSLContext's socket class (a documented hook);
  TCP failures, which paho swallows, are diagnosed by trying the address once more.
* A message counts as delivered when the broker acknowledged it (QoS >= 1) or it was written to
  the socket (QoS 0): `on_publish` in both cases. It counts as lost only when it really was
  dropped: refused at QoS 0 while disconnected, refused because the queue was full, a QoS 0
  message paho dropped on reconnect, or a QoS >= 1 message still unacknowledged at stop.
* MQTT 5 by default, falling back to 3.1.1 when the broker refuses version 5; with 5 the retained
  `online` carries a message expiry and is refreshed, so it cannot outlive the daemon for long.
"""

from __future__ import annotations

import logging
import math
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgepose.config import MqttConfig
from edgepose.mqtt.netloop import NetworkLoop
from edgepose.mqtt.reconnect import (
    BOUNCE_WINDOW_S,
    BOUNCES_FOR_TAKEOVER,
    TAKEOVER_WAIT_S,
    TAKEOVER_WINDOW_S,
    Backoff,
    describe_tls_error,
    diagnose_tcp,
)
from edgepose.mqtt.topics import STATUS_OFFLINE, STATUS_ONLINE, Topics

log = logging.getLogger(__name__)

# A connect (TCP + TLS handshake) that takes longer is given up: it also bounds how long a stop
# can wait for paho's thread to notice it.
CONNECT_TIMEOUT_S = 2.0
# An MQTT 5 CONNECT that gets no CONNACK within this is taken as "this broker does not speak 5".
CONNACK_TIMEOUT_S = 3.0
# QoS >= 1 messages in flight with no acknowledgement for this long, on a connection that is up,
# were lost by the broker: we reconnect and paho sends them again. mosquitto 2.0.11 as Debian 12
# ships it (and upstream since 2.0.16) silently drops every packet for a client whose outgoing
# queue is full (max_queued_messages), PUBACKs included, e.g. while a flood of commands arrives
# faster than we read; paho never sends a message again on the same connection, and after 20 lost
# acknowledgements (the broker's Receive Maximum) it sends no QoS 1 message at all. A broker that
# works acknowledges within milliseconds: 5 s is far beyond that, and short enough that a controller
# retrying a command once a second gets its reply a few seconds after a flood.
ACK_TIMEOUT_S = 5.0
# Reason codes compared by value (paho's ReasonCode compares with names or ints).
RC_SESSION_TAKEN_OVER = 0x8E
RC_UNSUPPORTED_PROTOCOL_VERSION = 0x84

DeliveryCallback = Callable[[bool], None]


@dataclass
class MqttStats:
    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    failed_attempts: int = 0
    protocol: str = "5"
    last_error: str | None = None
    last_error_at_s: float | None = None  # UNIX time of last_error
    session_takeovers: int = 0
    delivered: int = 0
    lost: int = 0


@dataclass
class _Pending:
    qos: int
    info: mqtt.MQTTMessageInfo
    on_delivery: DeliveryCallback | None
    handed_monotonic_s: float  # when publish() handed it to paho (QoS >= 1 only; 0 for QoS 0)


class PackedOnce(Properties):
    """PUBLISH properties that never change, packed once: `Properties.pack()` walks every property
    name MQTT 5 defines (about 5 µs), and paho packs the properties of every message it sends."""

    _packed: bytes

    @classmethod
    def publish_with_expiry(cls, expiry_s: int) -> PackedOnce:
        properties = cls(PacketTypes.PUBLISH)
        properties.MessageExpiryInterval = expiry_s
        # Properties.__setattr__ accepts only MQTT property names: store the bytes past it.
        object.__setattr__(properties, "_packed", bytes(Properties.pack(properties)))  # type: ignore[no-untyped-call]
        return properties

    def pack(self) -> bytes:
        return self._packed


class MqttPublisher:
    def __init__(self, config: MqttConfig, topics: Topics, client_id: str, password: str | None) -> None:
        self.config = config
        self.topics = topics
        self.client_id = client_id
        self.stats = MqttStats(protocol=config.protocol)
        self._password = password
        self._lock = threading.Lock()  # guards _pending, _early and the delivery counters
        self._pending: dict[int, _Pending] = {}
        # on_publish can run before publish() has returned the mid to us: remember the outcome.
        self._early: dict[int, bool] = {}
        self._stopping = threading.Event()
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self._attempts = 0
        self._attempt_failed = False  # a reason was recorded for the current attempt
        self._attempt_started_monotonic_s: float | None = None
        self._connack = False  # the current attempt got as far as a CONNACK
        self._tls_error: BaseException | None = None  # set by the socket class during this attempt
        self._logged_reason: str | None = None
        self._takeover_until_monotonic_s = 0.0  # reconnect slowly until then: another client has our id
        self._takeover_evidence = ""
        self._failures_since_connect = 0
        self._dropped_at_monotonic_s: float | None = None  # a working connection closed by the broker
        self._bounces: deque[float] = deque(maxlen=BOUNCES_FOR_TAKEOVER)
        self._status_sent_monotonic_s: float | None = None
        self._connected_monotonic_s = 0.0
        self._acknowledged_monotonic_s = 0.0  # the last PUBACK (or PUBCOMP) for a message of ours
        self._reconnecting = False  # we closed the connection on purpose (lost acknowledgements)
        self._properties_by_expiry_s: dict[int, Properties] = {}
        self._loop: NetworkLoop | None = None  # serves self._client once started
        self._retired: list[tuple[mqtt.Client, NetworkLoop]] = []  # clients left behind by the 3.1.1 fallback
        # topic filter -> (qos, the handler that owns it), and paho's per-topic callback for it
        self._subscriptions: dict[str, tuple[int, Callable[[str, bytes], None]]] = {}
        self._deliverers: dict[str, Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]] = {}
        self._protocol = mqtt.MQTTv5 if config.protocol == "5" else mqtt.MQTTv311
        self._client = self._make_client()

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    @property
    def v5(self) -> bool:
        return self._protocol == mqtt.MQTTv5

    def _make_client(self) -> mqtt.Client:
        config = self.config
        if self.v5:
            client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
            )
        else:
            client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=True,
            )
        if config.username:
            client.username_pw_set(config.username, self._password)
        if config.tls.enabled:
            client.tls_set_context(self._tls_context())
        client.will_set(self.topics.status, STATUS_OFFLINE, qos=config.qos.status, retain=True)
        client.reconnect_delay_set(min_delay=0, max_delay=0)  # the wait is ours: see _on_pre_connect
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.max_queued_messages_set(config.max_queued_messages)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        with self._lock:
            deliverers = list(self._deliverers.items())
        for topic, deliver in deliverers:  # a client made for the 3.1.1 fallback keeps the subscriptions
            client.message_callback_add(topic, deliver)
        return client

    def _tls_context(self) -> ssl.SSLContext:
        tls = self.config.tls
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
        publisher = self

        class RecordingSocket(ssl.SSLSocket):
            """Keeps the TLS error of this attempt: paho turns it into a bare 'connect failed'."""

            def do_handshake(self, block: bool = False) -> None:
                try:
                    super().do_handshake(block)
                except (ssl.SSLError, ssl.CertificateError, ConnectionError) as exc:
                    publisher._tls_error = exc
                    raise

            def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
                try:
                    return super().recv(buflen, flags)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    raise
                except ssl.SSLError as exc:  # e.g. a TLS 1.3 alert "certificate required" after the handshake
                    publisher._tls_error = exc
                    raise

        context.sslsocket_class = RecordingSocket  # documented: SSLContext.sslsocket_class
        return context

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; returns at once even when the broker is down.

        After stop() it connects again with a fresh paho client (stop released the old one): a
        reload that failed hands the broker session back to the publisher that had made way."""
        if self._stopping.is_set():
            self._stopping.clear()
            self._client = self._make_client()
        self._connect_async(self._client)

    def _connect_async(self, client: mqtt.Client) -> None:
        if self.v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            # The broker keeps our session (unacknowledged QoS >= 1 messages) this long across an outage.
            properties.SessionExpiryInterval = self.config.session_expiry_s
            client.connect_async(
                self.config.host,
                self.config.port,
                keepalive=self.config.keepalive_s,
                clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                properties=properties,
            )
        else:
            client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        self._loop = NetworkLoop(client, thread_name=f"edgepose-mqtt-{self.client_id}")
        self._loop.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Publish `offline` (if connected), flush, disconnect. Bounded by timeout_s plus, at worst,
        one connect attempt in flight (CONNECT_TIMEOUT_S)."""
        deadline = time.monotonic() + timeout_s
        self._stopping.set()
        client = self._client
        if self.stats.connected:
            info = client.publish(self.topics.status, STATUS_OFFLINE, qos=self.config.qos.status, retain=True)
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (ValueError, RuntimeError) as exc:
                log.warning("MQTT: could not publish offline before shutdown: %s", exc)
        loop = self._loop
        if loop is not None:
            loop.disconnect()
            loop.stop()
        for old, old_loop in self._retired:
            old_loop.stop()
            old.reinitialise()
        self._retired.clear()
        with self._lock:
            unacknowledged = list(self._pending.values())
            self._pending.clear()
            self._early.clear()
        for entry in unacknowledged:
            self._finish(False, entry.on_delivery)
        if unacknowledged:
            log.warning("MQTT: %d messages were not acknowledged by the broker before shutdown", len(unacknowledged))
        # A stopped client is never started again (start() makes a new one): release its socket now
        # rather than when it is garbage-collected (reinitialise is public and opens nothing).
        client.reinitialise()

    # -- publishing -----------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int,
        retain: bool = False,
        expiry_s: float | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> bool:
        """Hand a message to paho without blocking. True when it was accepted: sent, or queued for
        the broker (QoS >= 1 while disconnected). False when it was dropped at once.

        expiry_s: with MQTT 5, the broker discards the message (and a retained copy) after this
        many seconds (Message Expiry Interval, rounded up to whole seconds); ignored with 3.1.1.
        on_delivery(delivered) is called exactly once, from any thread: True when the broker
        acknowledged the message (QoS >= 1) or it was written to the socket (QoS 0), False when
        it was dropped.
        """
        properties = self._expiry_properties(expiry_s) if expiry_s is not None and self.v5 else None
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        queued_for_later = info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not queued_for_later:
            self._finish(False, on_delivery)  # QoS 0 while disconnected, or the queue is full
            return False
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = _Pending(qos, info, on_delivery, time.monotonic() if qos else 0.0)
                return True
        self._finish(early, on_delivery)
        return True

    def _expiry_properties(self, expiry_s: float) -> Properties:
        """The PUBLISH properties for an expiry, made and packed once per value: paho only reads
        them, and building and packing a Properties costs more than the rest of a QoS 0 publish()."""
        seconds = max(1, math.ceil(expiry_s))
        properties = self._properties_by_expiry_s.get(seconds)
        if properties is None:
            properties = PackedOnce.publish_with_expiry(seconds)
            self._properties_by_expiry_s[seconds] = properties
        return properties

    def publish_retained_state(self, topic: str, payload: bytes, qos: int, expiry_s: float | None = None) -> bool:
        """A retained state message (health). Not queued while disconnected: the daemon sends a
        fresh one as soon as the connection is back (see `stats.connects`), never a stale one."""
        if not self.stats.connected:
            return False
        return self.publish(topic, payload, qos, retain=True, expiry_s=expiry_s)

    def tick(self) -> None:
        """Timed duties, for the daemon's supervisor to call often (cheap): re-send the retained
        `online` before its MQTT 5 expiry runs out, reconnect when the broker lost acknowledgements
        (ACK_TIMEOUT_S), and give up on MQTT 5 with a broker that accepted the connection but never
        answered the CONNECT (some 3.1.1-only brokers, e.g. amqtt, neither refuse nor close)."""
        now = time.monotonic()
        self._check_acknowledgements(now)
        sent = self._status_sent_monotonic_s
        if self.v5 and self.stats.connected and sent is not None and now - sent >= self.config.status_expiry_s / 3:
            self._publish_online()
        started = self._attempt_started_monotonic_s
        waiting = not (self.stats.connected or self._connack or self._attempt_failed or self._stopping.is_set())
        if self.v5 and waiting and started is not None and now - started > CONNACK_TIMEOUT_S:
            self._failed(f"no answer from {self.address} to an MQTT 5 CONNECT within {CONNACK_TIMEOUT_S:g}s")
            self._fall_back_to_311(self._client)

    def _check_acknowledgements(self, now: float) -> None:
        loop = self._loop
        if not self.stats.connected or loop is None:
            return
        with self._lock:
            handed = [entry.handed_monotonic_s for entry in self._pending.values() if entry.qos > 0]
        if not handed:
            return
        # Nothing acknowledged for ACK_TIMEOUT_S, while the oldest message has waited at least that
        # long on this connection (paho sends at most 20 at a time: the others wait their turn).
        progress_s = max(min(handed), self._acknowledged_monotonic_s, self._connected_monotonic_s)
        if now - progress_s < ACK_TIMEOUT_S:
            return
        self._record(
            f"{self.address} acknowledged none of our {len(handed)} QoS 1 messages for {now - progress_s:.0f}s on a "
            "working connection (a broker that drops packets for a client it cannot send to fast enough, e.g. "
            "mosquitto 2.0 during a flood): reconnecting to send them again",
            logging.WARNING,
        )
        self._reconnecting = True
        self._connected_monotonic_s = now  # once per connection: the next check waits for the new one
        loop.reconnect()

    def _publish_online(self) -> None:
        self._status_sent_monotonic_s = time.monotonic()
        self.publish(
            self.topics.status, STATUS_ONLINE, self.config.qos.status, retain=True, expiry_s=self.config.status_expiry_s
        )

    def subscribe(self, topic: str, qos: int, on_message: Callable[[str, bytes], None]) -> None:
        """Receive messages on `topic` (a filter) now and after every reconnect.

        `on_message(topic, payload)` runs on paho's network thread: it must return quickly and
        must not raise (an exception is logged with its traceback as the bug it is)."""

        def deliver(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            try:
                on_message(message.topic, bytes(message.payload))
            except Exception:
                log.exception("MQTT: handling a message on %s failed", message.topic)

        with self._lock:
            self._subscriptions[topic] = (qos, on_message)
            self._deliverers[topic] = deliver
        self._client.message_callback_add(topic, deliver)
        if self.stats.connected:
            self._client.subscribe(topic, qos)

    def unsubscribe(self, topic: str, on_message: Callable[[str, bytes], None]) -> None:
        """Stop receiving `topic`, if `on_message` still owns it (a replacement part may have
        subscribed the same topic with its own handler before the old part closes)."""
        with self._lock:
            current = self._subscriptions.get(topic)
            if current is None or current[1] != on_message:
                return
            del self._subscriptions[topic]
            del self._deliverers[topic]
        self._client.message_callback_remove(topic)
        if self.stats.connected:
            self._client.unsubscribe(topic)

    def queued(self) -> int:
        """Messages handed to paho and not yet delivered: what a crash now would lose."""
        with self._lock:
            return len(self._pending)

    def _finish(self, delivered: bool, on_delivery: DeliveryCallback | None) -> None:
        with self._lock:
            if delivered:
                self.stats.delivered += 1
            else:
                self.stats.lost += 1
        if on_delivery is not None:
            on_delivery(delivered)

    # -- paho callbacks (paho's thread) ----------------------------------------------------------

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        if client is not self._client:
            return
        delivered = not reason_code.is_failure  # MQTT 5: a PUBACK may carry a refusal (e.g. not authorized)
        with self._lock:
            entry = self._pending.pop(mid, None)
            if entry is None:
                self._early[mid] = delivered
                return
            if entry.qos > 0:
                self._acknowledged_monotonic_s = time.monotonic()
        self._finish(delivered, entry.on_delivery)

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        """Before every attempt: account for what paho dropped, then wait the back-off."""
        self._count_dropped_qos0()
        if self._attempts > 0:
            wait_s = self._backoff.next_wait_s()
            if time.monotonic() < self._takeover_until_monotonic_s:
                wait_s = max(wait_s, TAKEOVER_WAIT_S * self._backoff.rng.uniform(0.75, 1.25))
            self._stopping.wait(wait_s)
        self._attempts += 1
        self._attempt_started_monotonic_s = time.monotonic()
        self._attempt_failed = False
        self._connack = False
        self._tls_error = None
        if self._stopping.is_set():
            # An OSError is what paho expects from a failed connect: its loop then sees the stop.
            raise ConnectionAbortedError("edgepose is stopping")

    def _count_dropped_qos0(self) -> None:
        # paho marks QoS 0 messages still unsent when it reconnects as lost (rc CONN_LOST) and drops them.
        with self._lock:
            dropped = [
                mid
                for mid, entry in self._pending.items()
                if entry.qos == 0 and entry.info.rc == MQTTErrorCode.MQTT_ERR_CONN_LOST
            ]
            entries = [self._pending.pop(mid) for mid in dropped]
        for entry in entries:
            self._finish(False, entry.on_delivery)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if client is not self._client:
            return
        self._connack = True
        if reason_code.is_failure:
            if self.v5 and reason_code.value == RC_UNSUPPORTED_PROTOCOL_VERSION:
                self._fall_back_to_311(client)
                return
            self._failed(f"refused by the broker: {reason_code} (reason code {reason_code.value})")
            return
        self._backoff.reset()
        self._connected_monotonic_s = time.monotonic()
        self.stats.connected = True
        self.stats.connects += 1
        bounced = self._dropped_at_monotonic_s is not None and self._failures_since_connect == 0
        self._dropped_at_monotonic_s = None
        after = f", after {self._failures_since_connect} failed attempts" if self._failures_since_connect else ""
        log.info(
            "MQTT connected to %s (MQTT %s, connection %d%s)", self.address, self.stats.protocol, self.stats.connects,
            after,
        )  # fmt: skip
        self._logged_reason = None
        self._failures_since_connect = 0
        if bounced:
            self._bounced()
        self._publish_online()
        with self._lock:
            subscriptions = list(self._subscriptions.items())
        # A clean (or expired) session forgets subscriptions: make them again on every connect.
        for topic, (qos, _) in subscriptions:
            client.subscribe(topic, qos)

    def _bounced(self) -> None:
        """The broker dropped a working connection and took us back at once: count it, and call it
        a takeover when it repeats (see BOUNCE_WINDOW_S)."""
        now = time.monotonic()
        self._bounces.append(now)
        in_window = len(self._bounces) == BOUNCES_FOR_TAKEOVER and now - self._bounces[0] <= BOUNCE_WINDOW_S
        if in_window:
            self._taken_over(
                f"the broker closed our connection {len(self._bounces)} times within {now - self._bounces[0]:.0f}s "
                "while accepting new ones"
            )

    def _taken_over(self, evidence: str) -> None:
        self._takeover_evidence = evidence
        self._takeover_until_monotonic_s = time.monotonic() + TAKEOVER_WINDOW_S
        self.stats.session_takeovers += 1
        self._record(
            f"session taken over ({evidence}): another client is connecting to {self.address} with client id "
            f"'{self.client_id}' - two devices with the same device_id or mqtt.client_id?",
            logging.ERROR,
        )

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if client is not self._client or self._stopping.is_set():
            return
        if self._tls_error is not None:
            self._failed(describe_tls_error(self._tls_error))
        else:
            self._failed(diagnose_tcp(self.config.host, self.config.port, timeout_s=1.0))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if client is not self._client:
            return
        was_connected = self.stats.connected
        self.stats.connected = False
        if self._stopping.is_set():
            return
        if not self._connack:
            if not self._attempt_failed:
                if self._tls_error is not None:
                    self._failed(describe_tls_error(self._tls_error))
                else:
                    hint = "" if self.config.tls.enabled else " (a TLS listener? then set mqtt.tls.enabled)"
                    self._failed(f"connection closed by {self.address} before it answered{hint}")
            return
        if not was_connected:
            return  # a refused CONNACK: already reported
        self.stats.disconnects += 1
        if self._reconnecting:
            self._reconnecting = False
            return  # ours, already reported: not the broker dropping us (see _bounced)
        if reason_code.value == RC_SESSION_TAKEN_OVER:
            self._taken_over("MQTT 5 reason code 0x8E")
            return
        if time.monotonic() < self._takeover_until_monotonic_s:
            self._taken_over(self._takeover_evidence)  # the other client again
            return
        if not getattr(flags, "is_disconnect_packet_from_server", False):
            self._dropped_at_monotonic_s = time.monotonic()
        detail = describe_tls_error(self._tls_error) if self._tls_error is not None else str(reason_code)
        self._record(f"disconnected from {self.address}: {detail}", logging.WARNING)

    # -- reasons ---------------------------------------------------------------------------------

    def _failed(self, reason: str) -> None:
        self._attempt_failed = True
        self.stats.failed_attempts += 1
        self._failures_since_connect += 1
        self._record(reason, logging.WARNING)

    def _record(self, reason: str, level: int) -> None:
        """Into health at once; into the log once per change of reason, not once per retry."""
        self.stats.last_error = reason
        self.stats.last_error_at_s = time.time()
        if reason != self._logged_reason:
            self._logged_reason = reason
            wait_s = TAKEOVER_WAIT_S if level >= logging.ERROR else self.config.reconnect_max_s
            log.log(level, "MQTT %s; retrying with back-off up to %.1fs", reason, wait_s)

    def _fall_back_to_311(self, old: mqtt.Client) -> None:
        """The broker refused MQTT 5: a paho client speaks one version, so a new one takes over."""
        log.warning("MQTT broker %s does not accept MQTT 5; falling back to MQTT 3.1.1", self.address)
        self._protocol = mqtt.MQTTv311
        self.stats.protocol = "3.1.1"
        with self._lock:
            stranded = list(self._pending.values())  # queued in the old client: they leave with it
            self._pending.clear()
            self._early.clear()
        for entry in stranded:
            self._finish(False, entry.on_delivery)
        old_loop = self._loop
        self._client = self._make_client()
        self._attempts = 0
        self._attempt_started_monotonic_s = None
        if old_loop is not None:
            self._retired.append((old, old_loop))
            old_loop.disconnect()  # its thread ends once the socket is closed
        if not self._stopping.is_set():
            self._connect_async(self._client)
