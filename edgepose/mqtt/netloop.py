"""One paho client's network loop, driven through paho's external-loop API from a thread of ours.

Why not `loop_start()`: in paho's threaded mode every `publish()` writes a wake-up byte to a socket
pair so that paho's thread leaves `select()` and writes the message. At 150 frames/s that is a
thread wake-up, a `select()` and a pass through paho's loop per message: about 0.15-0.2 ms of CPU
per frame on a 2-core x86_64, more than everything else the publish thread does (docs/performance.md).

Here the thread that publishes also writes: paho calls `on_socket_register_write` when it has bytes
to send, and that callback writes them at once with `loop_write()` (a QoS 0 message is on the
socket when `publish()` returns). Our thread only waits in `poll()` for what the broker sends
(acknowledgements, subscribed messages, PINGRESP), runs `loop_misc()` (keepalive), connects and
reconnects. It is woken only when a write could not be finished where it was asked for (the socket
buffer is full, or another thread is writing), never per message.

One lock serialises every paho call that can write (`loop_read`, `loop_write`, `loop_misc`,
`reconnect`), so two threads never interleave the bytes of two packets. Threads other than the
loop's only ever *try* the lock: a publisher never waits behind a slow callback or a connect.
Only public paho API is used (socket(), want_write(), loop_read/loop_write/loop_misc, reconnect(),
on_socket_register_write, on_connect_fail).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading

import paho.mqtt.client as mqtt

from edgepose.nativethread import set_native_name

log = logging.getLogger(__name__)

# How long the loop sleeps in poll() when nothing arrives: keepalive is checked at least this
# often (paho's own loop uses the same 1 s).
IDLE_WAIT_S = 1.0
# After a callback raised (a bug, logged with its traceback), wait this long before going on, so
# a bug that repeats on every pass cannot spin a core.
AFTER_ERROR_WAIT_S = 0.1


class NetworkLoop:
    """Connects `client` (after `connect_async`), keeps it connected and serves its socket until
    `stop()`. Reconnect timing is the client's `on_pre_connect` callback's (paho calls it before
    every attempt); a failed attempt calls the client's `on_connect_fail`, as paho's loop does."""

    def __init__(self, client: mqtt.Client, thread_name: str) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closing = False  # disconnect() was asked for: end once the socket is closed
        self._reconnect = threading.Event()  # reconnect() was asked for: the loop's thread does it
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        client.on_socket_register_write = self._register_write

    def start(self) -> None:
        self._thread.start()

    def disconnect(self) -> None:
        """Send DISCONNECT (if connected) and end the loop once the socket is closed."""
        self._closing = True
        self._client.disconnect()
        self._wake()

    def reconnect(self) -> None:
        """Close the connection with a DISCONNECT (an MQTT 5 broker keeps the session and sends no
        Will) and connect again at once; paho then sends again what the broker did not acknowledge."""
        self._reconnect.set()
        self._wake()

    def stop(self, timeout_s: float | None = None) -> None:
        """End the loop and wait for its thread (unless called from it); closes the wake-up pair."""
        self._stop.set()
        self._wake()
        if self._thread.ident is not None and threading.get_ident() != self._thread.ident:
            self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._wake_r.close()
            self._wake_w.close()

    # -- any thread -------------------------------------------------------------------------------

    def _register_write(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        """paho has bytes to send: write them here and now unless another thread is writing."""
        if threading.get_ident() == self._thread.ident:
            return  # the loop writes after every step it takes
        if self._lock.acquire(blocking=False):
            try:
                client.loop_write()
            finally:
                self._lock.release()
            # A packet queued by a third thread while we held the lock found the write already
            # registered and left it to us; a full socket buffer leaves bytes behind; a write error
            # closed the socket. In each case the loop's thread has to act.
            if not client.want_write() and client.socket() is not None:
                return
        self._wake()

    def _wake(self) -> None:
        # BlockingIOError: already awake (the pair's buffer is full); OSError: stopped (closed).
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # -- the loop's thread -----------------------------------------------------------------------

    def _run(self) -> None:
        set_native_name("ep-mqtt")
        while not self._stop.is_set():
            try:
                if self._client.socket() is None:
                    if self._closing:
                        return
                    self._connect()
                else:
                    self._serve_once()
            except Exception:
                log.exception("MQTT: the network loop hit an unexpected error")
                self._stop.wait(AFTER_ERROR_WAIT_S)

    def _connect(self) -> None:
        client = self._client
        self._reconnect.clear()  # a new connection is what a reconnect() asked for
        with self._lock:
            try:
                client.reconnect()  # calls on_pre_connect first, which waits the back-off
                return
            except OSError:
                pass
        on_connect_fail = client.on_connect_fail
        if on_connect_fail is not None:
            on_connect_fail(client, client.user_data_get())

    def _serve_once(self) -> None:
        client = self._client
        sock = client.socket()
        if sock is None:
            return
        # TLS may hold bytes it has already decrypted: poll() cannot see those.
        pending = sock.pending() if hasattr(sock, "pending") else 0
        # poll, not select: no limit on descriptor numbers in a process that has many open.
        poller = select.poll()
        try:
            poller.register(sock, select.POLLIN | (select.POLLOUT if client.want_write() else 0))
            poller.register(self._wake_r, select.POLLIN)
            events = dict(poller.poll(0 if pending else IDLE_WAIT_S * 1e3))
        except (OSError, ValueError):
            # Another thread's write failed and closed the socket (paho forgets it first): look again.
            if client.socket() is sock:
                self._stop.wait(AFTER_ERROR_WAIT_S)
            return
        if self._wake_r.fileno() in events:
            self._drain_wake()
        if self._reconnect.is_set():
            self._reconnect.clear()
            with self._lock:
                client.disconnect()  # paho closes the socket once the DISCONNECT is written
                if client.want_write():
                    client.loop_write()
            return  # _run connects again as soon as the socket is closed
        readable = events.get(sock.fileno(), 0) & (select.POLLIN | select.POLLERR | select.POLLHUP)
        with self._lock:
            if readable or pending:
                client.loop_read()
            if client.socket() is not None and client.want_write():
                client.loop_write()
            if client.socket() is not None:
                client.loop_misc()

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass
