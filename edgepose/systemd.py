"""systemd integration: sd_notify (READY, STATUS, WATCHDOG, RELOADING, STOPPING) and journald logging.

Uses systemd-python when it is importable (python3-systemd on Raspberry Pi OS); otherwise speaks
the notify protocol itself, which is one datagram on a unix socket, so a plain venv works too.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


def _notify_address(raw: str) -> str | bytes:
    # A leading '@' names a socket in the abstract namespace: the kernel wants a leading NUL instead.
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    return raw


class Notifier:
    """Sends sd_notify messages when NOTIFY_SOCKET is set; every method is a no-op otherwise."""

    def __init__(self, environ: Mapping[str, str] | None = None, use_library: bool = True) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET") or None
        self.watchdog_interval_s = _watchdog_interval_s(env)
        self._library_notify: Any = None
        if self._address and use_library:
            try:
                self._library_notify = importlib.import_module("systemd.daemon").notify
            except ImportError:
                self._library_notify = None
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def via(self) -> str:
        if not self.enabled:
            return "off"
        return "systemd-python" if self._library_notify is not None else "socket"

    def send(self, message: str) -> bool:
        if self._address is None:
            return False
        try:
            if self._library_notify is not None:
                # systemd-python raises (ConnectionRefusedError, ...) where libsystemd returns an error.
                return bool(self._library_notify(message))
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message.encode(), _notify_address(self._address))
            return True
        except OSError as exc:
            # Losing a notification must never take the daemon down; systemd will act on the silence.
            log.debug("sd_notify %r failed: %s", message, exc)
            return False

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        monotonic_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_us}\nSTATUS=reloading configuration")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=stopping")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    """WATCHDOG_USEC as seconds, if it is meant for this process (WATCHDOG_PID unset or ours)."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class WatchdogGate:
    """Pings only when inference made progress since the last ping, so a stall silences the watchdog.

    Called from the supervisor loop: `due(now, last_inference)` returns True at most every half
    interval, and only if a frame was inferred after the previous ping.
    """

    def __init__(self, interval_s: float) -> None:
        self.ping_every_s = interval_s / 2
        self._last_ping_s: float | None = None
        self._progress_mark_s: float | None = None

    def due(self, now_s: float, last_inference_s: float | None) -> bool:
        if last_inference_s is None:
            return False
        if self._last_ping_s is not None and now_s - self._last_ping_s < self.ping_every_s:
            return False
        if self._progress_mark_s is not None and last_inference_s <= self._progress_mark_s:
            return False
        self._last_ping_s = now_s
        self._progress_mark_s = last_inference_s
        return True


# ---------------------------------------------------------------------------------------------
# Logging


def under_journald(environ: Mapping[str, str] | None = None) -> bool:
    """True when stderr is the journal (systemd sets JOURNAL_STREAM=dev:inode of that stream)."""
    env = os.environ if environ is None else environ
    stream = env.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        device, inode = (int(part) for part in stream.split(":"))
        stat = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return stat.st_dev == device and stat.st_ino == inode


_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class PriorityPrefixFormatter(logging.Formatter):
    """`<N>message`: journald reads the syslog priority from this prefix on a service's stderr."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{record.name}: {super().format(record)}"


def journal_handler(device_id: str) -> logging.Handler:
    """journald's native protocol via systemd-python (structured fields); else priority-prefixed stderr."""
    try:
        journal_handler_class = importlib.import_module("systemd.journal").JournalHandler
        handler: logging.Handler = journal_handler_class(SYSLOG_IDENTIFIER="edgepose", EDGEPOSE_DEVICE_ID=device_id)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        return handler
    except ImportError:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(PriorityPrefixFormatter("%(message)s"))
        return handler
