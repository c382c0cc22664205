"""Real mosquittos configured for the reliability tests: TLS with openssl-made certificates, a
password file made by mosquitto_passwd, persistence, and a crash (SIGKILL) as well as a clean stop."""

from __future__ import annotations

import contextlib
import getpass
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from edgepose.localbroker import free_port, mosquitto_binary
from tests.tlsfiles import TlsFiles


class ConfiguredBroker:
    """mosquitto on 127.0.0.1:port with the given listener options; restartable on the same port."""

    def __init__(self, workdir: Path, options: str = "allow_anonymous true\n", port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        # `user`: started as root (CI), mosquitto would switch to user `mosquitto`, who cannot read
        # pytest's private tmp directories holding the certificates and the password file.
        user = f"user {getpass.getuser()}\n"
        self.conf.write_text(f"{user}listener {self.port} 127.0.0.1\n{options}")
        self.log_path = workdir / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 5.0) -> float:
        """Start and wait until the port accepts; returns the monotonic time it did."""
        binary = mosquitto_binary()
        if binary is None:  # a bare machine runs the other tests on the embedded amqtt broker
            pytest.skip("needs mosquitto (TLS, password file, persistence, MQTT 5); the embedded amqtt broker has none")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([binary, "-c", str(self.conf)], stdout=log, stderr=log, cwd=self.workdir)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return time.monotonic()
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not start: {self.log_path.read_text()[-800:]}")

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def crash(self) -> None:
        """SIGKILL: no clean shutdown, no last save of the persistence file."""
        self._end(signal.SIGKILL)

    def _end(self, how: signal.Signals) -> None:
        if self.process is not None:
            self.process.send_signal(how)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None


def tls_options(tls: TlsFiles, require_certificate: bool = False, expired: bool = False) -> str:
    cert, key = (tls.expired_server_cert, tls.expired_server_key) if expired else (tls.server_cert, tls.server_key)
    return (
        f"cafile {tls.ca_cert}\ncertfile {cert}\nkeyfile {key}\n"
        f"require_certificate {'true' if require_certificate else 'false'}\nallow_anonymous true\n"
    )


def password_options(workdir: Path, user: str, password: str) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(path), user, password], check=True, capture_output=True)
    path.chmod(0o600)
    return f"allow_anonymous false\npassword_file {path}\n"


class V5RefusingGate:
    """A TCP relay in front of a real broker that answers an MQTT 5 CONNECT the way a 3.1.1-only
    broker does (CONNACK, return code 1: unacceptable protocol version) and relays anything else.
    Not a broker: it reads one byte of the CONNECT (the protocol level) and copies bytes."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.refused = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._server.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        first = client.recv(4096)
        # CONNECT: fixed header, remaining length (1 byte for small packets), "\x00\x04MQTT", level.
        if len(first) > 8 and first[0] == 0x10 and first[4:8] == b"MQTT" and first[8] == 5:
            self.refused += 1
            client.sendall(b"\x20\x02\x00\x01")
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        upstream.sendall(first)
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._server.close()
