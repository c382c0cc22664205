"""The live view server in process: every endpoint, auth, max_clients, a stalled client, garbage
requests. Frames come from a feeder thread that renders the demo photos at 30 fps with a drawn pose,
the way the pipeline's publish thread offers them."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edgepose.config import WebConfig, load_config
from edgepose.errors import ConfigError, WebError
from edgepose.inference.stage import InferenceResult, StageTimings
from edgepose.localbroker import free_port
from edgepose.pose import KEYPOINT_NAMES, CropBox, Keypoint, Pose
from edgepose.sources.demo import DemoSource
from edgepose.web.live import LiveFeed
from edgepose.web.server import BOUNDARY, WebServer
from tests.conftest import POSE_DATA, run_edgepose
from tests.test_payloads import load_schema

PASSWORD = "correct horse battery staple"


def _result(index: int) -> InferenceResult:
    x = 0.3 + 0.01 * (index % 40)
    keypoints = tuple(
        Keypoint(n, x + (0.05 if "left" in n else -0.05), 0.1 + i / 20, 0.9) for i, n in enumerate(KEYPOINT_NAMES)
    )
    wall, mono = time.time(), time.monotonic()
    return InferenceResult(
        wall,
        mono,
        640,
        480,
        (Pose(keypoints, 0.9),),
        CropBox(0.05, 0.1, 0.95, 0.9),
        True,
        StageTimings(1.0, 4.0, 0.5),
        "movenet",
        "cpu",
    )


class Feeder:
    """Offers a demo frame and a result every 1/30 s, like the publish thread; counts what it offered."""

    def __init__(self, feed: LiveFeed) -> None:
        self.feed = feed
        self.source = DemoSource([POSE_DATA / "image1.png", POSE_DATA / "image2.jpeg"], 640, 480, 30.0)
        self.stop = threading.Event()
        self.offered = 0
        self.longest_offer_s = 0.0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        self.source.open()
        while not self.stop.is_set():
            frame = self.source.read()
            assert frame is not None
            started = time.perf_counter()
            self.feed.offer(frame.image, _result(frame.index))
            self.longest_offer_s = max(self.longest_offer_s, time.perf_counter() - started)
            self.offered += 1


@dataclass
class Live:
    server: WebServer
    feeder: Feeder
    health_calls: list[float]

    def get(self, path: str, auth: str | None = None, timeout_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=timeout_s)
        headers = {"Authorization": auth} if auth else {}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body


@contextlib.contextmanager
def _start(tmp_path: Path, **web: Any) -> Iterator[Live]:
    password = web.pop("password", None)
    write_timeout_s = web.pop("write_timeout_s", 10.0)
    config = WebConfig(listen="127.0.0.1:0", **web)
    feed = LiveFeed()
    feeder = Feeder(feed)
    calls: list[float] = []

    def health() -> dict[str, Any]:
        calls.append(time.monotonic())
        return {"state": "running", "device_id": "test", "fps": {"inference": 30.0}}

    server = WebServer(config, feed, health, "test", password, write_timeout_s=write_timeout_s)
    feeder.thread.start()
    try:
        with server:
            yield Live(server, feeder, calls)
    finally:
        feeder.stop.set()
        feeder.thread.join(2)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    with _start(tmp_path, max_clients=2) as started:
        yield started


class Stream:
    """A raw-socket /stream.mjpg client that splits the multipart body into JPEG frames."""

    def __init__(self, port: int, auth: str | None = None, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(5)
        extra = f"Authorization: {auth}\r\n" if auth else ""
        self.sock.sendall(f"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        self.buffer = b""
        head = self._until(b"\r\n\r\n")
        self.status = int(head.split(b" ")[1])
        self.headers = head.decode("latin-1").lower()

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("stream closed")
            self.buffer += chunk
        found, _, self.buffer = self.buffer.partition(marker)
        return found

    def frame(self) -> bytes:
        self._until(f"--{BOUNDARY}\r\n".encode())
        part_head = self._until(b"\r\n\r\n").decode()
        length = int(
            next(line for line in part_head.split("\r\n") if line.lower().startswith("content-length")).split(":")[1]
        )
        while len(self.buffer) < length + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("stream closed")
            self.buffer += chunk
        jpeg, self.buffer = self.buffer[:length], self.buffer[length + 2 :]
        return jpeg

    def close(self) -> None:
        self.sock.close()


def _decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _wait(predicate: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _expected_fps(offered: int, elapsed_s: float) -> float:
    """What a viewer must get: 10 fps from the 30 fps feeder (web.max_fps is 15), or two thirds of
    what the feeder managed on a machine too busy to render 15 frames a second."""
    return 10.0 if offered / elapsed_s >= 15 else 2 / 3 * offered / elapsed_s


def test_page_and_its_assets_only(live: Live) -> None:
    status, headers, body = live.get("/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'src="/stream.mjpg"' in body and b"/live.js" in body
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert live.get("/live.js")[1]["content-type"].startswith("text/javascript")
    assert live.get("/live.css")[1]["content-type"].startswith("text/css")
    for path in (
        "/index.html",
        "/../../etc/passwd",
        "/assets/index.html",
        "/live.js/../server.py",
        "/%2e%2e/etc/passwd",
    ):
        assert live.get(path)[0] == 404, path


def test_snapshot_annotated_and_raw(live: Live) -> None:
    assert _wait(lambda: live.get("/snapshot.jpg")[0] == 200)
    _, headers, body = live.get("/snapshot.jpg")
    assert headers["content-type"] == "image/jpeg"
    annotated = _decode(body)
    raw = _decode(live.get("/snapshot.jpg?raw=1")[2])
    assert annotated.shape == raw.shape == (480, 640, 3)
    # The skeleton's colours are in the annotated picture and not in the raw one.
    orange = np.all(np.abs(annotated.astype(int) - (255, 140, 0)) < 40, axis=2).sum()
    raw_orange = np.all(np.abs(raw.astype(int) - (255, 140, 0)) < 40, axis=2).sum()
    assert orange > 200 > raw_orange


def test_health_and_keypoints_json(live: Live) -> None:
    import jsonschema

    status, headers, body = live.get("/api/health")
    assert status == 200 and headers["content-type"] == "application/json"
    health = json.loads(body)
    assert health["state"] == "running" and health["web"]["viewers"] == 0
    assert _wait(lambda: live.get("/api/keypoints")[0] == 200)
    keypoints = json.loads(live.get("/api/keypoints")[2])
    jsonschema.validate(keypoints, load_schema("keypoints"))
    assert keypoints["device_id"] == "test" and len(keypoints["poses"]) == 1


def test_no_frame_yet_is_a_json_503(tmp_path: Path) -> None:
    feed = LiveFeed()
    with WebServer(WebConfig(listen="127.0.0.1:0"), feed, dict, "test", None) as server:
        for path in ("/snapshot.jpg", "/api/keypoints"):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            connection.request("GET", path)
            response = connection.getresponse()
            assert response.status == 503
            assert json.loads(response.read()) == {"error": "no frame inferred yet"}


def test_stream_rate_and_no_encoding_without_a_viewer(live: Live) -> None:
    time.sleep(1.0)
    assert live.feeder.offered > 15
    assert live.server.stats()["frames_encoded"] == 0, "nobody watches: nothing may be encoded"
    stream = Stream(live.server.port)
    assert stream.status == 200 and f"boundary={BOUNDARY}" in stream.headers
    first = _decode(stream.frame())
    started, offered = time.monotonic(), live.feeder.offered
    frames = [first]
    while time.monotonic() - started < 2.0:
        frames.append(_decode(stream.frame()))
    elapsed_s = time.monotonic() - started
    rate = (len(frames) - 1) / elapsed_s
    assert rate >= _expected_fps(live.feeder.offered - offered, elapsed_s), f"{rate:.1f} fps"
    assert rate <= 15 * 1.2, f"web.max_fps 15 exceeded: {rate:.1f} fps"
    assert not np.array_equal(frames[0], frames[-1]), "the picture must move"
    stream.close()
    assert _wait(lambda: live.server.stats()["viewers"] == 0)
    encoded = live.server.stats()["frames_encoded"]
    time.sleep(0.6)
    assert live.server.stats()["frames_encoded"] <= encoded + 1, "encoding must stop when the last viewer leaves"
    # Microseconds when idle; the bound leaves room for a busy machine descheduling the thread.
    assert live.feeder.longest_offer_s < 0.25, "offering a frame must never wait for the web side"


def test_max_clients(live: Live) -> None:
    first, second = Stream(live.server.port), Stream(live.server.port)
    first.frame(), second.frame()
    status, headers, body = live.get("/stream.mjpg")
    assert status == 503 and b"web.max_clients is 2" in body and headers["retry-after"] == "5"
    first.close()
    assert _wait(lambda: live.server.stats()["viewers"] == 1)
    third = Stream(live.server.port)
    assert third.status == 200
    third.frame()
    second.close(), third.close()


def test_a_stalled_client_does_not_hold_up_the_others_and_is_dropped(tmp_path: Path) -> None:
    with _start(tmp_path, write_timeout_s=1.0) as live:
        stalled = Stream(live.server.port, rcvbuf=4096)  # reads the headers, then never again
        reader = Stream(live.server.port)
        started, offered = time.monotonic(), live.feeder.offered
        count = 0
        while time.monotonic() - started < 4.0:
            reader.frame()
            count += 1
        elapsed_s = time.monotonic() - started
        expected = _expected_fps(live.feeder.offered - offered, elapsed_s)
        assert count / elapsed_s >= expected, f"the reading client got {count / elapsed_s:.1f} fps beside a stalled one"
        assert _wait(lambda: live.server.stats()["stalled_disconnected"] == 1, 5.0)
        assert live.server.stats()["viewers"] == 1
        assert live.feeder.longest_offer_s < 0.25
        stalled.close(), reader.close()


def test_http_basic_auth(tmp_path: Path) -> None:
    with _start(tmp_path, password=PASSWORD) as live:
        good = "Basic " + base64.b64encode(f"edgepose:{PASSWORD}".encode()).decode()
        wrong = "Basic " + base64.b64encode(b"edgepose:guess").decode()
        for path in ("/", "/stream.mjpg", "/snapshot.jpg", "/api/health", "/api/keypoints", "/live.js"):
            status, headers, body = live.get(path)
            assert status == 401, path
            assert headers["www-authenticate"].startswith('Basic realm="edgepose"')
            assert live.get(path, wrong)[0] == 401
            assert live.get(path, "Basic !!!notbase64")[0] == 401
            assert live.get(path, "Bearer " + PASSWORD)[0] == 401
        assert live.get("/", good)[0] == 200
        assert _wait(lambda: live.get("/snapshot.jpg", good)[0] == 200)
        status, _, body = live.get("/api/health", good)
        assert status == 200 and PASSWORD.encode() not in body
        stream = Stream(live.server.port, auth=good)
        assert stream.status == 200
        stream.frame()
        stream.close()
        assert live.server.stats()["auth_refused"] >= 24


GARBAGE = [
    b"\x00\xff\xfe garbage \r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"b" * 20000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
    b"POST /api/health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
]


@pytest.mark.parametrize("request_bytes", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_requests_get_4xx_and_the_server_keeps_serving(live: Live, request_bytes: bytes) -> None:
    with socket.create_connection(("127.0.0.1", live.server.port), timeout=5) as sock:
        sock.sendall(request_bytes)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
                if b"\r\n\r\n" in reply:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
    if reply:
        status = int(reply.split(b" ")[1])
        assert 400 <= status < 500, reply[:200]
    assert live.get("/api/health")[0] == 200


def test_non_loopback_listen_needs_a_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="reachable from the network and camera images are private"):
        load_config(None, ["web.listen=0.0.0.0:8080"])
    with pytest.raises(ConfigError, match="reachable from the network"):
        load_config(None, ["web.listen=[::]:8080"])
    load_config(None, ["web.listen=0.0.0.0:8080", "web.allow_anonymous=true"])
    load_config(None, ["web.listen=0.0.0.0:8080", f"web.password_file={tmp_path / 'pw'}"])
    load_config(None, ["web.listen=[::1]:8080"])
    load_config(None, ["web.listen=localhost:8080"])
    load_config(None, ["web.listen=0.0.0.0:8080", "web.enabled=false"])
    for bad in ("8080", "host:http", "::1:8080", "127.0.0.1:70000"):
        with pytest.raises(ConfigError, match=r"web\.listen"):
            load_config(None, [f"web.listen={bad}"])


def test_run_refuses_a_lan_listen_without_a_password_with_exit_78(model_dir: Path) -> None:
    result = run_edgepose("run", "--set", "web.listen=0.0.0.0:8080", model_dir=model_dir, timeout_s=30)
    assert result.returncode == 78, result.stderr
    assert "Traceback" not in result.stderr
    assert "web.password_file or web.password_credential, or web.allow_anonymous: true" in result.stderr


def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = WebServer(WebConfig(listen=f"127.0.0.1:{port}"), LiveFeed(), dict, "t", None)
        with pytest.raises(WebError, match=f"web.listen 127.0.0.1:{port}: cannot listen"):
            server.start()
    assert free_port()
