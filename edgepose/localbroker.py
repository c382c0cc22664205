"""A private mosquitto on a loopback port, for `edgepose bench` and the tests.

Not used by the daemon itself: in production the broker is the user's.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from edgepose.errors import EdgeposeError

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mosquitto_binary() -> str | None:
    for candidate in MOSQUITTO_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


class LocalBroker:
    """Runs `mosquitto` on 127.0.0.1:port with a throwaway config; start() waits until it accepts."""

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._workdir = workdir or Path(tempfile.mkdtemp(prefix="edgepose-broker-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._conf = self._workdir / "mosquitto.conf"
        self._conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.log_path = self._workdir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 5.0) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise EdgeposeError("mosquitto is not installed: sudo apt install mosquitto")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen([binary, "-c", str(self._conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise EdgeposeError(f"mosquitto did not start on port {self.port}: {self.log_path.read_text()[-500:]}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
            self._process = None

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
