"""The MQTT adapter against real mosquittos, in process: failure reasons in words (TLS with
openssl-made certificates, a password file, DNS, refused ports), jittered reconnects, delivery
accounting through outages, MQTT 5 with fallback to 3.1.1, expiring status, session takeovers."""

from __future__ import annotations

import logging
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgepose.config import MqttConfig
from edgepose.localbroker import free_port
from edgepose.mqtt.publisher import MqttPublisher
from edgepose.mqtt.reconnect import Backoff
from edgepose.mqtt.topics import Topics
from tests.brokers import ConfiguredBroker, V5RefusingGate, password_options, tls_options
from tests.conftest import Broker
from tests.tlsfiles import TlsFiles, make_tls_files

SECRET = "s3cret-Pa55"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[Callable[..., ConfiguredBroker]]:
    made: list[ConfiguredBroker] = []

    def make(options: str = "allow_anonymous true\n", start: bool = True, port: int | None = None) -> ConfiguredBroker:
        broker = ConfiguredBroker(tmp_path / f"broker{len(made)}", options, port)
        made.append(broker)
        if start:
            broker.start()
        return broker

    yield make
    for broker in made:
        broker.stop()


@pytest.fixture
def publishers() -> Iterator[Callable[..., MqttPublisher]]:
    made: list[MqttPublisher] = []

    def make(
        host: str = "127.0.0.1",
        port: int = 1883,
        client_id: str = "edgepose-test",
        password: str | None = None,
        **mqtt_keys: Any,
    ) -> MqttPublisher:
        config = MqttConfig.model_validate({"host": host, "port": port, **mqtt_keys})
        publisher = MqttPublisher(config, Topics("edgepose", client_id.removeprefix("edgepose-")), client_id, password)
        made.append(publisher)
        publisher.start()
        return publisher

    yield make
    for publisher in made:
        publisher.stop(timeout_s=0.5)


class Subscriber:
    """A real paho subscriber that reconnects fast and resubscribes; counts what arrives."""

    def __init__(self, port: int, topic: str = "edgepose/#", protocol: int = mqtt.MQTTv311) -> None:
        self.messages: list[tuple[str, bytes, bool, float]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"sub-{random.getrandbits(32):x}",
            protocol=protocol,
        )
        self.client.reconnect_delay_set(0.05, 0.2)
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(5)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain), time.monotonic()))

    def on(self, suffix: str) -> list[tuple[str, bytes, bool, float]]:
        with self.lock:
            return [m for m in self.messages if m[0].endswith(suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(condition: Callable[[], object], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "edgepose.mqtt.publisher" and r.levelno >= logging.WARNING
    ]


# -- back-off --------------------------------------------------------------------------------------


def test_backoff_doubles_is_capped_and_jittered() -> None:
    backoff = Backoff(0.5, 2.0, random.Random(1))
    waits = [backoff.next_wait_s() for _ in range(8)]
    ceilings = [0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    assert all(c / 2 <= w <= c for w, c in zip(waits, ceilings, strict=True)), waits
    assert len({round(w, 6) for w in waits}) == len(waits)  # jitter: no two waits alike
    backoff.reset()
    assert backoff.next_wait_s() <= 0.5
    # Two devices that lost the same broker do not retry in lock-step.
    a, b = Backoff(0.5, 2.0, random.Random(2)), Backoff(0.5, 2.0, random.Random(3))
    assert [round(a.next_wait_s(), 3) for _ in range(5)] != [round(b.next_wait_s(), 3) for _ in range(5)]


# -- reasons in words ------------------------------------------------------------------------------


def _fails_with(publisher: MqttPublisher, text: str, caplog: pytest.LogCaptureFixture, attempts: int = 3) -> None:
    assert wait_until(lambda: publisher.stats.failed_attempts >= attempts, 15), publisher.stats
    assert not publisher.stats.connected
    assert publisher.stats.last_error is not None and text in publisher.stats.last_error, publisher.stats.last_error
    assert publisher.stats.last_error_at_s is not None and abs(publisher.stats.last_error_at_s - time.time()) < 15
    logged = [m for m in _warnings(caplog) if text in m]
    assert len(logged) == 1, _warnings(caplog)  # once per change of reason, not once per retry


def test_refused_port_is_named_and_logged_once(publishers: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    publisher = publishers(port=free_port(), reconnect_min_s=0.05, reconnect_max_s=0.1)
    _fails_with(publisher, "connection refused by 127.0.0.1:", caplog, attempts=5)


def test_dns_failure_is_named(publishers: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    publisher = publishers(host="broker.invalid", reconnect_min_s=0.05, reconnect_max_s=0.1)
    _fails_with(publisher, "DNS: cannot resolve broker.invalid", caplog, attempts=2)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong-ca", "TLS verify failed: self-signed certificate in certificate chain"),
        ("expired", "TLS verify failed: certificate has expired"),
        ("no-client-cert", "the broker wants a client certificate"),
        ("tls-to-plain-port", "TLS handshake failed: the broker closed the connection (is the port a plain MQTT"),
        ("plain-to-tls-port", "before it answered (a TLS listener? then set mqtt.tls.enabled)"),
    ],
)
def test_tls_failures_are_named(
    case: str, expected: str, tls: TlsFiles, brokers: Any, publishers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    options = {
        "wrong-ca": tls_options(tls),
        "expired": tls_options(tls, expired=True),
        "no-client-cert": tls_options(tls, require_certificate=True),
        "tls-to-plain-port": "allow_anonymous true\n",
        "plain-to-tls-port": tls_options(tls),
    }[case]
    broker = brokers(options)
    tls_keys: dict[str, Any] = {"enabled": True, "ca_file": str(tls.ca_cert)}
    if case == "wrong-ca":
        tls_keys["ca_file"] = str(tls.other_ca_cert)
    if case == "plain-to-tls-port":
        tls_keys = {"enabled": False}
    publisher = publishers(port=broker.port, tls=tls_keys, reconnect_min_s=0.05, reconnect_max_s=0.1)
    _fails_with(publisher, expected, caplog)


def test_wrong_password_is_named_and_never_printed(
    brokers: Any, publishers: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    broker = brokers(password_options(tmp_path / "pw", "edgepose", SECRET))
    publisher = publishers(
        port=broker.port, username="edgepose", password="wrong-" + SECRET, reconnect_min_s=0.05, reconnect_max_s=0.1
    )
    _fails_with(publisher, "refused by the broker: Not authorized", caplog)
    assert SECRET not in caplog.text and SECRET not in str(publisher.stats)


def test_tls_with_password_and_mutual_tls_connect(tls: TlsFiles, brokers: Any, publishers: Any, tmp_path: Path) -> None:
    broker = brokers(tls_options(tls, require_certificate=True) + password_options(tmp_path / "pw", "edgepose", SECRET))
    subscriber_side = brokers()  # the published messages are checked on the TLS broker through its own client
    del subscriber_side
    tls_keys = {
        "enabled": True,
        "ca_file": str(tls.ca_cert),
        "cert_file": str(tls.client_cert),
        "key_file": str(tls.client_key),
    }
    publisher = publishers(port=broker.port, username="edgepose", password=SECRET, tls=tls_keys)
    assert wait_until(lambda: publisher.stats.connected, 10), publisher.stats
    delivered: list[bool] = []
    assert publisher.publish("edgepose/test/x", b"1", qos=1, on_delivery=delivered.append)
    assert wait_until(lambda: delivered == [True], 5)
    assert publisher.stats.last_error is None


# -- delivery accounting --------------------------------------------------------------------------


def test_qos1_queued_through_an_outage_is_delivered_not_lost(brokers: Any, publishers: Any) -> None:
    broker = brokers("allow_anonymous true\npersistence false\n")
    publisher = publishers(port=broker.port, reconnect_min_s=0.1, reconnect_max_s=0.3)
    assert wait_until(lambda: publisher.stats.connected, 5)
    outcomes: list[bool] = []
    broker.stop()
    assert wait_until(lambda: not publisher.stats.connected, 5)
    for index in range(50):
        assert publisher.publish("edgepose/test/k", b"%d" % index, qos=1, on_delivery=outcomes.append)
    assert publisher.publish("edgepose/test/k", b"q0", qos=0, on_delivery=outcomes.append) is False
    assert outcomes == [False]  # QoS 0 while disconnected: really dropped
    assert publisher.queued() == 50
    subscriber_broker_up = broker.start()
    subscriber = Subscriber(broker.port, "edgepose/test/k")
    try:
        assert wait_until(lambda: len(outcomes) == 51, 10), (len(outcomes), publisher.stats)
        assert outcomes.count(True) == 50 and publisher.queued() == 0
        assert publisher.stats.lost == 1 and publisher.stats.delivered >= 50
        assert wait_until(lambda: publisher.stats.connects == 2, 1)
        del subscriber_broker_up
    finally:
        subscriber.close()


def test_qos0_counts_when_written_and_queue_full_is_lost(brokers: Any, publishers: Any) -> None:
    broker = brokers()
    publisher = publishers(port=broker.port, max_queued_messages=5)
    assert wait_until(lambda: publisher.stats.connected, 5)
    outcomes: list[bool] = []
    for _ in range(20):
        publisher.publish("edgepose/test/q0", b"x", qos=0, on_delivery=outcomes.append)
    assert wait_until(lambda: len(outcomes) == 20, 5) and all(outcomes)
    broker.stop()
    assert wait_until(lambda: not publisher.stats.connected, 5)
    results = [publisher.publish("edgepose/test/q1", b"x", qos=1, on_delivery=outcomes.append) for _ in range(8)]
    assert results == [True] * 5 + [False] * 3  # the sixth on would exceed max_queued_messages
    assert outcomes[20:] == [False] * 3


# -- MQTT 5 --------------------------------------------------------------------------------------


def test_mqtt5_by_default_with_message_expiry(brokers: Any, publishers: Any) -> None:
    broker = brokers()
    publisher = publishers(port=broker.port)
    assert wait_until(lambda: publisher.stats.connected, 5)
    assert publisher.stats.protocol == "5"
    done: list[bool] = []
    publisher.publish("edgepose/test/expiring", b"soon gone", qos=1, retain=True, expiry_s=1, on_delivery=done.append)
    publisher.publish("edgepose/test/lasting", b"stays", qos=1, retain=True, on_delivery=done.append)
    assert wait_until(lambda: done == [True, True], 5)
    time.sleep(2.2)
    late = Subscriber(broker.port, "edgepose/test/#", protocol=mqtt.MQTTv5)
    try:
        time.sleep(0.3)
        assert [m[0] for m in late.messages if m[0] != "edgepose/test/status"] == ["edgepose/test/lasting"]
    finally:
        late.close()


def test_falls_back_to_311_when_the_broker_refuses_5(
    brokers: Any, publishers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    broker = brokers()
    gate = V5RefusingGate(broker.port)
    subscriber = Subscriber(broker.port, "edgepose/test/#")
    try:
        publisher = publishers(port=gate.port)
        assert wait_until(lambda: publisher.stats.connected, 10), publisher.stats
        assert gate.refused == 1 and publisher.stats.protocol == "3.1.1"
        assert any("does not accept MQTT 5; falling back to MQTT 3.1.1" in m for m in _warnings(caplog))
        done: list[bool] = []
        publisher.publish("edgepose/test/after-fallback", b"1", qos=1, expiry_s=5, on_delivery=done.append)
        assert wait_until(lambda: done == [True], 5)
        assert wait_until(lambda: bool(subscriber.on("after-fallback")), 5)
    finally:
        subscriber.close()
        gate.close()


def test_falls_back_to_311_when_the_broker_never_answers_5(publishers: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The embedded amqtt broker (make run without mosquitto) neither refuses nor closes an MQTT 5 CONNECT."""
    from edgepose.embedded_broker import available

    if available() is None:
        pytest.skip("amqtt is not installed (it is in the dev extra)")
    caplog.set_level(logging.INFO)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "edgepose.embedded_broker", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: _accepts(port), 20)
        publisher = publishers(port=port)
        # The daemon's supervisor calls tick() every 0.1 s; here the test does.
        assert wait_until(lambda: publisher.tick() is None and publisher.stats.connected, 15), publisher.stats
        assert publisher.stats.protocol == "3.1.1"
        assert publisher.stats.last_error is not None and "no answer" in publisher.stats.last_error
        done: list[bool] = []
        publisher.publish("edgepose/test/x", b"1", qos=1, on_delivery=done.append)
        assert wait_until(lambda: done == [True], 5)
    finally:
        process.terminate()
        process.wait(10)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_protocol_311_when_configured(brokers: Any, publishers: Any) -> None:
    broker = brokers()
    publisher = publishers(port=broker.port, protocol="3.1.1")
    assert wait_until(lambda: publisher.stats.connected, 5)
    assert publisher.stats.protocol == "3.1.1"


# -- takeover --------------------------------------------------------------------------------------


def test_session_takeover_is_an_error_naming_the_id_and_slows_the_fight(
    brokers: Any, publishers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    broker = brokers()
    first = publishers(port=broker.port, client_id="edgepose-twin", reconnect_min_s=0.05, reconnect_max_s=0.1)
    assert wait_until(lambda: first.stats.connected, 5)
    second = publishers(port=broker.port, client_id="edgepose-twin", reconnect_min_s=0.05, reconnect_max_s=0.1)

    def takeovers() -> int:
        return first.stats.session_takeovers + second.stats.session_takeovers

    assert wait_until(lambda: takeovers() >= 1, 5)
    time.sleep(1)
    settled = takeovers()
    connects = first.stats.connects + second.stats.connects
    time.sleep(3)
    # Without the takeover wait the two threw each other off every ~0.1 s: dozens in 3 s.
    assert takeovers() - settled <= 1 and first.stats.connects + second.stats.connects - connects <= 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and all("session taken over" in e and "'edgepose-twin'" in e for e in errors)
    taken = first if first.stats.session_takeovers else second
    assert taken.stats.last_error is not None and "session taken over" in taken.stats.last_error


@pytest.mark.needs_mqtt5  # under amqtt every (re)connect first waits out the v5 CONNECT before 3.1.1
def test_in_flight_counts_until_on_publish_and_survives_an_outage(broker: Broker, subscribe: Any) -> None:
    collector = subscribe(broker, "edgepose/pub/#")
    config = MqttConfig(host=broker.host, port=broker.port, reconnect_min_s=0.2, reconnect_max_s=1.0)
    publisher = MqttPublisher(config, Topics(config.base_topic, "pub"), "edgepose-pub-test", None)
    publisher.start()
    try:
        assert wait_until(lambda: publisher.stats.connected, 10)
        for index in range(50):
            assert publisher.publish("edgepose/pub/n", str(index).encode(), qos=1)
        assert wait_until(lambda: publisher.queued() == 0, 10), publisher.queued()
        assert len(collector.wait_for("pub/n", 50, timeout_s=5)) == 50

        broker.stop()
        assert wait_until(lambda: not publisher.stats.connected, 10)
        assert not publisher.publish("edgepose/pub/lost", b"x", qos=0)  # refused and counted, not queued
        for index in range(5):
            assert publisher.publish("edgepose/pub/later", str(index).encode(), qos=1)
        assert publisher.queued() == 5  # kept by paho for the next connection
        assert publisher.stats.lost == 1

        broker.start()
        assert wait_until(lambda: publisher.stats.connected, 15.0)
        assert wait_until(lambda: publisher.queued() == 0, 10), publisher.queued()
    finally:
        publisher.stop()
    assert publisher.queued() == 0


def test_subscribe_survives_reconnects_and_unsubscribe_checks_the_owner(brokers: Any, publishers: Any) -> None:
    broker = brokers()
    publisher = publishers(port=broker.port, reconnect_min_s=0.05, reconnect_max_s=0.2)
    got: list[tuple[str, bytes]] = []
    publisher.subscribe("edgepose/test/set", 1, lambda topic, payload: got.append((topic, payload)))
    assert wait_until(lambda: publisher.stats.connected, 5)

    def send(payload: bytes) -> None:
        sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sender-{random.getrandbits(32):x}")
        sender.connect("127.0.0.1", broker.port)
        sender.loop_start()
        sender.publish("edgepose/test/set", payload, qos=1).wait_for_publish(5)
        sender.disconnect()
        sender.loop_stop()

    time.sleep(0.3)
    send(b"one")
    assert wait_until(lambda: got == [("edgepose/test/set", b"one")], 5), got
    broker.stop()
    broker.start()
    assert wait_until(lambda: publisher.stats.connects == 2, 10)
    time.sleep(0.3)
    send(b"two")
    assert wait_until(lambda: len(got) == 2, 5), got
    publisher.unsubscribe("edgepose/test/set", lambda topic, payload: None)  # not the owner: kept
    send(b"three")
    assert wait_until(lambda: len(got) == 3, 5), got


@pytest.mark.needs_mqtt5  # under amqtt every (re)connect first waits out the v5 CONNECT before 3.1.1
def test_stopped_publisher_connects_again_on_start(broker: Broker, subscribe: Any, publishers: Any) -> None:
    """A failed reload hands the broker session back: stop() then start() reconnects with a fresh client."""
    collector = subscribe(broker, "edgepose/again/status")
    publisher = publishers(broker.host, broker.port, client_id="edgepose-again")
    assert wait_until(lambda: publisher.stats.connected, 10)
    publisher.stop()
    assert not publisher.stats.connected
    publisher.start()
    assert wait_until(lambda: publisher.stats.connected, 10)
    assert publisher.publish("edgepose/again/after", b"x", qos=1)
    assert wait_until(lambda: publisher.queued() == 0, 10)
    publisher.stop()
    assert collector.wait_for("again/status", 4, timeout_s=5) == [b"online", b"offline", b"online", b"offline"]


# -- threading model: the publishing thread writes, nobody is woken per message ---------------------


def _voluntary_switches(native_id: int) -> int:
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("voluntary_ctxt_switches")))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_qos0_is_written_by_the_publishing_thread_without_waking_the_network_thread(
    broker: Broker, publishers: Any
) -> None:
    publisher = publishers(broker.host, broker.port, client_id="edgepose-inline")
    assert wait_until(lambda: publisher.stats.connected, 10)
    (network,) = [t for t in threading.enumerate() if t.name == "edgepose-mqtt-edgepose-inline"]
    assert network.native_id is not None
    time.sleep(0.2)  # let the connect's acknowledgements settle
    outcomes: list[tuple[bool, int]] = []
    switches_before = _voluntary_switches(network.native_id)
    started = time.monotonic()
    for _ in range(300):
        publisher.publish(
            "edgepose/inline/keypoints", b"k" * 1300, qos=0, expiry_s=30,
            on_delivery=lambda ok: outcomes.append((ok, threading.get_ident())),
        )  # fmt: skip
        # Written when publish() returns, by this thread: on the socket, and counted.
        assert outcomes[-1] == (True, threading.get_ident())
        time.sleep(0.001)
    woken = _voluntary_switches(network.native_id) - switches_before
    # The network thread only wakes for its 1 s select() timeout (keepalive) or the broker's packets.
    assert woken <= 2 + 2 * (time.monotonic() - started), woken
    assert publisher.stats.delivered >= 300 and publisher.stats.lost == 0
    publisher.stop()
    assert not network.is_alive()


def test_threads_publishing_at_once_never_interleave_packets(broker: Broker, publishers: Any) -> None:
    """Large messages fill the socket buffer, so the network thread finishes writes while other
    threads keep publishing: every message must still arrive whole and in each thread's order."""
    subscriber = Subscriber(broker.port, "edgepose/many/#")
    publisher = publishers(broker.host, broker.port, client_id="edgepose-many")
    assert wait_until(lambda: publisher.stats.connected, 10)
    outcomes: list[bool] = []
    per_thread = 80

    def flood(sender: int) -> None:
        for i in range(per_thread):
            filler = (b"%d" % sender) * (150_000 if i % 2 == 0 else 20)
            payload = b"%d:%d:" % (sender, i) + filler
            publisher.publish(f"edgepose/many/{sender}/keypoints", payload, 0, on_delivery=outcomes.append)

    threads = [threading.Thread(target=flood, args=(sender,)) for sender in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        # Count only the flood: the publisher's own `online` status arrives under edgepose/many/ too.
        assert wait_until(lambda: len(subscriber.on("/keypoints")) >= 6 * per_thread, 20), len(subscriber.messages)
        for sender in range(6):
            payloads = [m[1] for m in subscriber.on(f"many/{sender}/keypoints")]
            assert [int(p.split(b":")[1]) for p in payloads] == list(range(per_thread))
            for payload in payloads:
                filler = payload.split(b":", 2)[2]
                assert filler == (b"%d" % sender) * len(filler) and len(filler) in (150_000, 20)
        assert wait_until(lambda: len(outcomes) == 6 * per_thread, 5) and all(outcomes)
    finally:
        subscriber.close()
