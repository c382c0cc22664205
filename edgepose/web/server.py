"""The live view's HTTP server (aiohttp), a part the daemon starts and closes like any other.

Like paho's network loop, it runs its own event-loop thread (started by `start()`, joined by
`close()`), plus the StreamEncoder thread while someone watches. It reads the pipeline through a
LiveFeed and a health callable and writes nothing back, so a slow or stalled client can only ever
hold up its own connection.

Routes are a fixed table: no path from a request reaches the filesystem. Why aiohttp rather than
starlette+uvicorn: docs/web.md (bench/results/web-servers.json).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import socket
import threading
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from edgepose.config import WebConfig, listen_address
from edgepose.errors import WebError
from edgepose.mqtt.payloads import keypoints_payload
from edgepose.pipeline import keypoints_message
from edgepose.web.encoder import StreamEncoder, render_jpeg
from edgepose.web.live import LiveFeed, LiveFrame

log = logging.getLogger(__name__)

BOUNDARY = "edgepose-frame"
# A stream client that cannot take a frame within this long is stalled: it is disconnected so it
# holds no buffers and no max_clients slot.
WRITE_TIMEOUT_S = 10.0
# Kernel send buffer per stream: a few frames. A slow link then gets fresh frames instead of
# seconds of stale ones queued in the kernel.
STREAM_SNDBUF_BYTES = 128 * 1024
START_TIMEOUT_S = 10.0

# path -> (asset file, content type). The only files the server ever reads, once, at start.
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/live.js": ("live.js", "text/javascript; charset=utf-8"),
    "/live.css": ("live.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebServer:
    """`/`, `/stream.mjpg`, `/snapshot.jpg`, `/api/health`, `/api/keypoints` on `web.listen`."""

    def __init__(
        self,
        config: WebConfig,
        feed: LiveFeed,
        health: Callable[[], dict[str, Any]],
        device_id: str,
        password: str | None,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self.config = config
        self.feed = feed
        self._health = health
        self._device_id = device_id
        self._credentials = f"{config.username}:{password}".encode() if password else None
        self._write_timeout_s = write_timeout_s
        self._assets = {
            path: ((resources.files("edgepose.web") / "assets" / name).read_bytes(), kind)
            for path, (name, kind) in ASSETS.items()
        }
        self._encoder = self._new_encoder()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._viewers: set[asyncio.Event] = set()
        self._latest_jpeg: tuple[int, bytes] | None = None
        self._closing = False
        self.port = 0
        self.stalled_disconnected = 0
        self.auth_refused = 0

    # -- lifecycle (called from the daemon's thread) --------------------------------------------

    def start(self) -> None:
        """Bind and serve; WebError when the address cannot be bound. Startable again after close()."""
        host, port = listen_address(self.config.listen)
        self._stop = threading.Event()
        self._closing = False
        self._viewers = set()
        self._latest_jpeg = None
        self._encoder = self._new_encoder()
        loop = asyncio.new_event_loop()
        self._loop = loop
        loop_thread = threading.Thread(target=loop.run_forever, name="edgepose-web", daemon=True)
        loop_thread.start()
        self._threads.append(loop_thread)
        try:
            asyncio.run_coroutine_threadsafe(self._serve(host, port), loop).result(START_TIMEOUT_S)
        except OSError as exc:
            self.close()
            raise WebError(f"web.listen {self.config.listen}: cannot listen: {exc.strerror or exc}") from None
        encoder = threading.Thread(
            target=self._encoder.run, args=(self._stop,), name="edgepose-web-encode", daemon=True
        )
        encoder.start()
        self._threads.append(encoder)
        auth = "HTTP Basic auth" if self._credentials else "no password"
        log.info("live view on http://%s/ (%s)", _url_host(host, self.port), auth)

    def _new_encoder(self) -> StreamEncoder:
        web = self.config
        return StreamEncoder(self.feed, self._on_jpeg, web.max_fps, web.jpeg_quality)

    def close(self) -> None:
        self._stop.set()
        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(5.0)
            except (TimeoutError, RuntimeError) as exc:
                log.warning("live view did not shut down cleanly: %s", exc)
            loop.call_soon_threadsafe(loop.stop)
        for thread in self._threads:
            thread.join(5.0)
        if loop is not None and not loop.is_running():
            loop.close()
        self._threads = []
        self._loop = None

    def __enter__(self) -> WebServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        return {
            "listen": self.config.listen,
            "viewers": len(self._viewers),
            "frames_encoded": self._encoder.frames_encoded,
            "encode_ms_last": round(self._encoder.encode_ms_last, 2),
            "stalled_disconnected": self.stalled_disconnected,
            "auth_refused": self.auth_refused,
        }

    # -- on the event loop ------------------------------------------------------------------------

    async def _serve(self, host: str, port: int) -> None:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/stream.mjpg", self._stream)
        app.router.add_get("/snapshot.jpg", self._snapshot)
        app.router.add_get("/api/health", self._api_health)
        app.router.add_get("/api/keypoints", self._api_keypoints)
        for path in self._assets:
            app.router.add_get(path, self._asset)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        self.port = int(runner.addresses[0][1])

    async def _shutdown(self) -> None:
        self._closing = True
        for event in self._viewers:
            event.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await asyncio.get_running_loop().shutdown_default_executor()

    def _on_jpeg(self, seq: int, jpeg: bytes) -> None:
        """From the encoder thread: hand the new frame to the loop, which wakes every stream."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._publish_jpeg, seq, jpeg)

    def _publish_jpeg(self, seq: int, jpeg: bytes) -> None:
        self._latest_jpeg = (seq, jpeg)
        for event in self._viewers:
            event.set()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._credentials is not None and not self._authorized(request.headers.get("Authorization", "")):
            self.auth_refused += 1
            return web.Response(
                status=401,
                text="authentication required\n",
                headers={"WWW-Authenticate": 'Basic realm="edgepose", charset="UTF-8"', **SECURITY_HEADERS},
            )
        response = await handler(request)
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
        return response

    def _authorized(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or self._credentials is None:
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        # Constant time: how much of a guess matched must not show in how long the refusal takes.
        return hmac.compare_digest(given, self._credentials)

    async def _asset(self, request: web.Request) -> web.Response:
        body, kind = self._assets[request.path]
        return web.Response(body=body, headers={"Content-Type": kind})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if self._closing:
            return web.Response(status=503, text="shutting down\n")
        if len(self._viewers) >= self.config.max_clients:
            return web.Response(
                status=503,
                text=f"too many viewers: web.max_clients is {self.config.max_clients}\n",
                headers={"Retry-After": "5"},
            )
        wake = asyncio.Event()
        self._viewers.add(wake)
        self._encoder.viewer_joined()
        try:
            return await self._stream_to(request, wake)
        finally:
            self._viewers.discard(wake)
            self._encoder.viewer_left()

    async def _stream_to(self, request: web.Request, wake: asyncio.Event) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}", **SECURITY_HEADERS}
        )
        # asyncio hands out a TransportSocket: setsockopt works on it, most else does not.
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF_BYTES)
        await response.prepare(request)
        sent_seq = 0
        while not self._closing:
            await wake.wait()
            wake.clear()
            latest = self._latest_jpeg
            if latest is None or latest[0] == sent_seq:
                continue
            seq, jpeg = latest
            head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
            try:
                await asyncio.wait_for(response.write(head + jpeg + b"\r\n"), self._write_timeout_s)
            except TimeoutError:
                self.stalled_disconnected += 1
                log.info("live view: a stream client took no frame for %.0fs; disconnected", self._write_timeout_s)
                if request.transport is not None:
                    request.transport.abort()
                break
            except (ConnectionError, RuntimeError):
                break  # the viewer went away
            sent_seq = seq
        return response

    async def _snapshot(self, request: web.Request) -> web.Response:
        frame = self.feed.latest()
        if frame is None:
            return _no_frame()
        raw = request.query.get("raw", "0") not in ("0", "", "false")
        cached = self._latest_jpeg
        if not raw and cached is not None and cached[0] == frame.seq:
            jpeg = cached[1]
        else:
            loop = asyncio.get_running_loop()
            jpeg = await loop.run_in_executor(None, self._render, frame, raw)
        return web.Response(body=jpeg, headers={"Content-Type": "image/jpeg"})

    def _render(self, frame: LiveFrame, raw: bool) -> bytes:
        return render_jpeg(frame, self.config.jpeg_quality, raw)

    async def _api_health(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        payload = await loop.run_in_executor(None, self._health)  # reads /proc and /sys: not on the loop
        return _json(payload | {"web": self.stats()})

    async def _api_keypoints(self, request: web.Request) -> web.Response:
        frame = self.feed.latest()
        if frame is None:
            return _no_frame()
        # seq counts the frames the live view was offered; the latency runs up to this request.
        message = keypoints_message(frame.result, self._device_id, frame.seq)
        return _json(keypoints_payload(message))


def _json(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(payload).encode(), status=status, headers={"Content-Type": "application/json"})


def _no_frame() -> web.Response:
    return _json({"error": "no frame inferred yet"}, status=503)


def _url_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
