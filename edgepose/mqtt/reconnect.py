"""Reconnect timing and connection-failure reasons in words. Pure: no paho, no threads.

Kept apart from the paho adapter so the back-off curve and the wording of every failure can be
tested without a broker, and read in one place.
"""

from __future__ import annotations

import random
import socket
import ssl
from dataclasses import dataclass, field

# After a session takeover (another client connected with our client id), wait this long before
# taking it back: two devices with one id would otherwise throw each other off several times a second.
TAKEOVER_WAIT_S = 10.0
# ...and keep waiting that long for this window after the last takeover.
TAKEOVER_WINDOW_S = 60.0
# mosquitto 2.0 closes the old connection without the MQTT 5 DISCONNECT "session taken over" (0x8E).
# What gives it away: the broker drops a working connection and yet accepts the next connect at
# once. Twice within BOUNCE_WINDOW_S is a takeover (a broker restart makes the next connect fail).
BOUNCE_WINDOW_S = 30.0
BOUNCES_FOR_TAKEOVER = 2


@dataclass
class Backoff:
    """Exponential back-off with jitter: min_s, doubling, capped at max_s; each wait is drawn from
    50-100% of that, so a fleet that lost its broker together does not reconnect in lock-step."""

    min_s: float
    max_s: float
    rng: random.Random = field(default_factory=random.Random)
    _failures: int = 0

    def next_wait_s(self) -> float:
        ceiling_s = min(self.max_s, self.min_s * 2.0 ** min(self._failures, 32))
        self._failures += 1
        return self.rng.uniform(ceiling_s / 2.0, ceiling_s)

    def reset(self) -> None:
        self._failures = 0


def describe_tls_error(exc: BaseException) -> str:
    """A TLS failure during the handshake or the first read, in words a user can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS verify failed: {exc.verify_message or exc.reason}"
    plain_port = "is the port a plain MQTT listener? TLS brokers usually use 8883"
    if isinstance(exc, (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError)):
        return f"TLS handshake failed: the broker closed the connection ({plain_port})"
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or exc).lower().replace("_", " ")
        if "wrong version number" in reason or "packet length too long" in reason or "record layer" in reason:
            return f"TLS handshake failed: {reason} ({plain_port})"
        if "certificate required" in reason or ("handshake failure" in reason and "alert" in reason):
            return f"TLS: the broker wants a client certificate ({reason}); set mqtt.tls.cert_file and key_file"
        if "unknown ca" in reason or "bad certificate" in reason or "certificate unknown" in reason:
            return f"TLS: the broker rejected our client certificate ({reason})"
        return f"TLS handshake failed: {reason}"
    if isinstance(exc, ssl.CertificateError):
        return f"TLS verify failed: {exc}"
    return f"TLS handshake failed: {exc}"


def diagnose_tcp(host: str, port: int, timeout_s: float) -> str:
    """Why a TCP connection to host:port fails, found by trying it again (paho keeps the exception).

    Called only after paho's attempt failed without a TLS error: a resolver failure, a refused
    port, a silent firewall and an unreachable network each get their own words.
    """
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"DNS: cannot resolve {host} ({exc.strerror})"
    except UnicodeError:
        return f"DNS: {host!r} is not a valid host name"
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except ConnectionRefusedError:
        return f"connection refused by {host}:{port} (no broker listening there?)"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout_s:g}s (host down or a firewall)"
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc.strerror or exc}"
    return f"connection to {host}:{port} failed (it accepts connections now: the broker may have just come back)"
