"""A private broker on a loopback port, for `edgepose bench` and the tests: mosquitto when it is
installed, else the embedded pure-Python one (amqtt, see embedded_broker.py), so a machine with
Python and nothing else can run `make test`.

Not used by the daemon itself: in production the broker is the user's.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from edgepose.embedded_broker import available as embedded_available
from edgepose.errors import EdgeposeError

# Debian installs mosquitto in /usr/sbin, which is not on a normal user's PATH: look there too.
# EDGEPOSE_MOSQUITTO_DIRS="" looks on PATH alone (tests use it to stand in for a bare machine).
DEFAULT_MOSQUITTO_DIRS = "/usr/sbin:/usr/local/sbin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    extra = os.environ.get("EDGEPOSE_MOSQUITTO_DIRS", DEFAULT_MOSQUITTO_DIRS)
    return shutil.which("mosquitto", path=extra) if extra else None


def broker_description() -> str:
    """Which broker LocalBroker will start here, for `make test` to say."""
    binary = mosquitto_binary()
    if binary is not None:
        return f"mosquitto ({binary})"
    embedded = embedded_available()
    if embedded is not None:
        return f"embedded amqtt {embedded} (no mosquitto installed; MQTT 3.1.1 only)"
    return "none (install mosquitto, or pip install amqtt)"


class LocalBroker:
    """Runs a broker on 127.0.0.1:port (mosquitto with a throwaway config, else the embedded one);
    start() waits until it accepts. `embedded` says which one ran."""

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._workdir = workdir or Path(tempfile.mkdtemp(prefix="edgepose-broker-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._conf = self._workdir / "mosquitto.conf"
        self._conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.log_path = self._workdir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.embedded = False

    def start(self, timeout_s: float = 5.0) -> None:
        binary = mosquitto_binary()
        if binary is not None:
            command = [binary, "-c", str(self._conf)]
        elif embedded_available() is not None:
            command = [sys.executable, "-m", "edgepose.embedded_broker", "--port", str(self.port)]
            self.embedded = True
            timeout_s = max(timeout_s, 15.0)  # a Python process importing amqtt, not a C binary
        else:
            raise EdgeposeError("no MQTT broker: install mosquitto (sudo apt install mosquitto) or amqtt")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            # Ours must still be running: when another process took the port meanwhile (the port was
            # free when chosen, maybe long before), the broker exits and that other listener answers.
            if self._process.poll() is not None:
                break
            if self._listening():
                return
            time.sleep(0.05)
        self.stop()
        name = "the embedded broker" if self.embedded else "mosquitto"
        raise EdgeposeError(f"{name} did not start on port {self.port}: {self.log_path.read_text()[-500:]}")

    def _listening(self) -> bool:
        """Our broker process (not just anyone) listens on the port."""
        if self._process is None:
            return False
        try:
            connections = psutil.Process(self._process.pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr[1] == self.port for c in connections)

    @property
    def pid(self) -> int | None:
        """The running mosquitto's process id (bench/fleet.py measures its CPU)."""
        return self._process.pid if self._process is not None else None

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
