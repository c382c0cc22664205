"""sd_notify over a real NOTIFY_SOCKET datagram socket, the watchdog, signals and SIGHUP reload."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgepose.systemd import Notifier, WatchdogGate, under_journald
from tests.conftest import Broker, edgepose_command, edgepose_env


class NotifySocket:
    """What systemd does: bind a datagram socket and record each message with its arrival time."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            # journald's native protocol frames a value holding a newline with a binary length.
            self.messages.append((time.time(), data.decode(errors="replace")))

    def lines(self, key: str) -> list[tuple[float, str]]:
        return [(t, line) for t, message in list(self.messages) for line in message.split("\n") if line.startswith(key)]

    def wait_for(self, key: str, count: int = 1, timeout_s: float = 90) -> list[tuple[float, str]]:
        # A generous deadline: it only bounds a failure; start-up under load takes tens of seconds.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(self.lines(key)) < count:
            time.sleep(0.02)
        return self.lines(key)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifySocket]:
    address = (
        str(tmp_path / "notify.sock") if request.param == "path" else f"@edgepose-test-{os.getpid()}-{id(tmp_path)}"
    )
    listener = NotifySocket(address)
    yield listener
    listener.close()


def _start(broker: Broker, model_dir: Path, notify: NotifySocket, *args: str, **env: str) -> subprocess.Popen[str]:
    command = edgepose_command(
        "run", "--set", f"mqtt.port={broker.port}", "--set", f"mqtt.host={broker.host}", "--set", "device_id=sd", *args
    )
    return subprocess.Popen(
        command,
        env=edgepose_env(model_dir, NOTIFY_SOCKET=notify.address, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _start_with_config(config: Path, model_dir: Path, notify: NotifySocket) -> subprocess.Popen[str]:
    return subprocess.Popen(
        edgepose_command("run", "-c", str(config)),
        env=edgepose_env(model_dir, NOTIFY_SOCKET=notify.address),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(process: subprocess.Popen[str]) -> tuple[int, str, float]:
    """SIGTERM; the seconds until the process had exited (reaped, not until its pipes were read)."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    took_s = time.monotonic() - started
    _, stderr = process.communicate(timeout=30)
    return process.returncode, stderr, took_s


def test_ready_status_watchdog_stopping_and_sigterm(
    broker: Broker, subscribe: Any, model_dir: Path, notify_socket: NotifySocket
) -> None:
    collector = subscribe(broker)
    # WatchdogSec=30s in the unit; scaled down to 2 s here (not less: a 0.4 s watchdog is missed by a
    # daemon that merely waits for a core on a loaded machine, as systemd's would be).
    process = _start(broker, model_dir, notify_socket, "--set", "camera.source=synthetic:30", WATCHDOG_USEC="2000000")
    try:
        ready = notify_socket.wait_for("READY=1")
        assert ready, "no READY=1"
        ready_at = ready[0][0]
        first = json.loads(collector.wait_for("sd/keypoints", 1, timeout_s=30)[0])
        # READY only after a frame went through the model: that frame was captured before READY.
        assert first["timestamp"] <= ready_at
        pings = [t for t, _ in notify_socket.wait_for("WATCHDOG=1", count=5, timeout_s=60)]
        assert len(pings) >= 5, pings
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        # Half of WATCHDOG_USEC = 1 s: a steady rhythm, never faster (not every 0.1 s supervisor tick)
        # and never missing the watchdog's deadline while frames flow.
        assert min(gaps) > 0.5 and max(gaps) < 2.0, gaps
        status = notify_socket.wait_for("STATUS=running")
        assert any("fps" in line and "mqtt=connected" in line for _, line in status), status
    finally:
        sent_s = time.monotonic()
        process.send_signal(signal.SIGTERM)
        offline_s = None
        while offline_s is None and time.monotonic() - sent_s < 10 and process.poll() is None:
            if collector.on("sd/status")[-1:] == [b"offline"]:
                offline_s = time.monotonic() - sent_s
            time.sleep(0.02)
        process.wait(timeout=30)  # no second SIGTERM: it would kill the interpreter's teardown (-15)
        exit_s = time.monotonic() - sent_s
        _, stderr = process.communicate(timeout=30)
        code = process.returncode
    assert code == 0, stderr
    # The requirement, stop within 2 s of SIGTERM, is the daemon's own stop work: pipeline stopped,
    # `offline` published, connection closed. What follows is Python tearing the interpreter down
    # (about 0.2 s of CPU; several seconds of wall time when a loaded machine starves the process,
    # measured by strace), bounded by the unit's TimeoutStopSec=10 before systemd would SIGKILL.
    if offline_s is None:
        offline_s = exit_s if collector.on("sd/status")[-1:] == [b"offline"] else float("inf")
    assert offline_s < 2.0, f"`offline` {offline_s:.2f}s after SIGTERM"
    assert exit_s < 10.0, f"exited {exit_s:.2f}s after SIGTERM"
    assert notify_socket.wait_for("STOPPING=1", timeout_s=2)
    late = subscribe(broker)
    assert [p.decode() for p in late.wait_for("sd/status", 1, timeout_s=3)] == ["offline"]


def test_no_watchdog_pings_while_the_source_is_stalled(broker: Broker, model_dir: Path, tmp_path: Path) -> None:
    """A source delivering one frame every 4 s: after each frame, pings stop until the next frame."""
    notify = NotifySocket(str(tmp_path / "n.sock"))
    process = _start(broker, model_dir, notify, "--set", "camera.source=synthetic:0.25", WATCHDOG_USEC="500000")
    try:
        ready = notify.wait_for("READY=1")
        assert ready, "no READY=1"
        ready_at = ready[0][0]
        time.sleep(6.5)  # frames at ~0 s, ~4 s: two bursts of progress, each worth at most one ping
        pings = [t - ready_at for t, _ in notify.lines("WATCHDOG=1")]
    finally:
        code, stderr, _ = _stop(process)
        notify.close()
    assert code == 0, stderr
    # One ping per inferred frame at most, never a steady 0.25 s rhythm through the stall.
    assert 1 <= len(pings) <= 3, pings
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(gap > 3.0 for gap in gaps), pings


def test_sighup_applies_a_valid_change_and_survives_an_invalid_file(
    broker: Broker, subscribe: Any, model_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "edgepose.yaml"
    config.write_text(
        f"device_id: hup\ncamera:\n  source: synthetic:20\nmqtt:\n  host: {broker.host}\n  port: {broker.port}\n"
        "health:\n  interval_s: 60\n"
    )
    notify = NotifySocket(str(tmp_path / "n.sock"))
    collector = subscribe(broker)
    process = _start_with_config(config, model_dir, notify)
    try:
        assert notify.wait_for("READY=1"), "no READY=1"
        assert len(collector.wait_for("hup/health", 1, timeout_s=30)) == 1
        time.sleep(1.0)
        assert len(collector.on("hup/health")) == 1, "health interval 60 s: no second message yet"

        config.write_text(config.read_text().replace("interval_s: 60", "interval_s: 0.3"))
        process.send_signal(signal.SIGHUP)
        assert notify.wait_for("RELOADING=1", timeout_s=30)
        assert len(notify.wait_for("READY=1", count=2, timeout_s=60)) == 2
        health = collector.wait_for("hup/health", 6, timeout_s=30)
        assert len(health) >= 6, "the new health interval was not applied"

        config.write_text(config.read_text() + "bogus_section: 1\n")
        process.send_signal(signal.SIGHUP)
        assert len(notify.wait_for("RELOADING=1", count=2, timeout_s=30)) == 2
        # The rejection is done when the daemon says READY again (after a reload, good or bad).
        assert len(notify.wait_for("READY=1", count=3, timeout_s=60)) == 3
        assert process.poll() is None, "an invalid config on SIGHUP must not stop the daemon"
        before = len(collector.on("hup/keypoints"))
        more = collector.wait_for("hup/keypoints", before + 5, timeout_s=30)
        assert len(more) >= before + 5, "keypoints stopped after a rejected reload"
    finally:
        code, stderr, _ = _stop(process)
        notify.close()
    assert code == 0, stderr
    assert "reload rejected, keeping the running config" in stderr
    assert "bogus_section: unknown key" in stderr


def test_notifier_is_silent_without_notify_socket() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval_s is None
    assert notifier.send("READY=1") is False


def test_watchdog_usec_for_another_pid_is_ignored() -> None:
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    own = Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())})
    assert own.watchdog_interval_s == 1.0


def test_watchdog_gate_needs_progress_between_pings() -> None:
    gate = WatchdogGate(interval_s=1.0)
    assert not gate.due(0.0, None)  # nothing inferred yet
    assert gate.due(0.1, 0.05)
    assert not gate.due(0.3, 0.25)  # too soon: half the interval is 0.5 s
    assert gate.due(0.7, 0.65)
    assert not gate.due(1.3, 0.65)  # no inference since the last ping: stalled
    assert not gate.due(5.0, 0.65)
    assert gate.due(5.1, 5.05)  # frames again


def test_under_journald_matches_stderr_device_and_inode() -> None:
    stat = os.fstat(2)
    assert under_journald({"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
    assert not under_journald({"JOURNAL_STREAM": "1:2"})
    assert not under_journald({})


# CI installs the `systemd` extra and sets this, so the production (systemd-python) variants fail
# there instead of skipping if the extra ever goes missing.
REQUIRE_SYSTEMD_PYTHON = os.environ.get("EDGEPOSE_REQUIRE_SYSTEMD_PYTHON") == "1"


def require_systemd_python() -> None:
    try:
        import systemd.daemon
        import systemd.journal  # noqa: F401
    except ImportError as exc:
        if REQUIRE_SYSTEMD_PYTHON:
            pytest.fail(f"EDGEPOSE_REQUIRE_SYSTEMD_PYTHON=1 but systemd-python does not import: {exc}")
        pytest.skip("systemd-python not installed (the `systemd` extra)")


def hide_systemd_python(tmp_path: Path) -> str:
    """A PYTHONPATH entry whose `systemd` package fails to import: a venv without systemd-python."""
    package = tmp_path / "no-systemd-python" / "systemd"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('raise ImportError("systemd-python hidden by the test")\n')
    return str(package.parent)


@pytest.mark.parametrize("use_library", [False, True])
def test_notifier_sends_real_datagrams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_library: bool) -> None:
    if use_library:
        require_systemd_python()
    listener = NotifySocket(str(tmp_path / "n.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    notifier = Notifier(use_library=use_library)
    assert notifier.via == ("systemd-python" if use_library else "socket")
    notifier.ready("running cpu 1.0 fps")
    notifier.reloading()
    notifier.stopping()
    try:
        assert listener.wait_for("READY=1", timeout_s=2)
        assert listener.wait_for("STATUS=running cpu 1.0 fps", timeout_s=2)
        assert listener.wait_for("MONOTONIC_USEC=", timeout_s=2)
        assert listener.wait_for("STOPPING=1", timeout_s=2)
    finally:
        notifier.close()
        listener.close()


@pytest.mark.parametrize("use_library", [False, True])
def test_notifier_survives_a_socket_nobody_listens_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_library: bool
) -> None:
    """systemd gone or restarting: a lost notification must not take the daemon down (systemd-python
    raised ConnectionRefusedError out of the supervisor loop: exit 70, an internal error)."""
    if use_library:
        require_systemd_python()
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody.sock"))
    notifier = Notifier(use_library=use_library)
    assert notifier.via == ("systemd-python" if use_library else "socket")
    try:
        assert notifier.send("WATCHDOG=1") is False
        notifier.ready("running")
        notifier.stopping()
    finally:
        notifier.close()


# Runs the daemon in a private mount namespace whose /run/systemd/journal is the test's directory, so
# libsystemd's sd_journal_send() reaches the test's socket at its fixed path and the host is untouched.
_PRIVATE_JOURNAL = (
    "[ -d /run/systemd ] || mount -t tmpfs tmpfs /run; mkdir -p /run/systemd; "
    "mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/journal && "
    'mount --bind "$0" /run/systemd/journal && exec "$@"'
)


@pytest.mark.parametrize("use_library", [False, True], ids=["stderr-prefix", "systemd-python"])
def test_logs_go_to_journald_only_when_stderr_is_the_journal(
    broker: Broker, model_dir: Path, tmp_path: Path, use_library: bool
) -> None:
    """With JOURNAL_STREAM naming our stderr: structured records through systemd-python when it is
    installed (the Pi install), else every stderr line with a syslog priority prefix."""
    read_fd, write_fd = os.pipe()
    stat = os.fstat(write_fd)
    command = daemon = edgepose_command(
        "run",
        "--max-frames",
        "3",
        "--set",
        "camera.source=synthetic",
        "--set",
        f"mqtt.port={broker.port}",
        "--set",
        f"mqtt.host={broker.host}",
        "--set",
        "device_id=journaled",
    )
    env = edgepose_env(model_dir, JOURNAL_STREAM=f"{stat.st_dev}:{stat.st_ino}")
    journal: NotifySocket | None = None
    if use_library:
        require_systemd_python()
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            pytest.skip("needs root and unshare for a private /run/systemd/journal")
        journal_dir = tmp_path / "journal"
        journal_dir.mkdir()
        journal = NotifySocket(str(journal_dir / "socket"))
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _PRIVATE_JOURNAL, str(journal_dir)]
        command += daemon
    else:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [hide_systemd_python(tmp_path), env.get("PYTHONPATH")]))
    try:
        process = subprocess.Popen(command, env=env, stderr=write_fd, stdout=subprocess.DEVNULL)
        os.close(write_fd)
        with os.fdopen(read_fd) as stream:
            output = stream.read()
        assert process.wait(30) == 0, output
    finally:
        if journal is not None:
            journal.close()
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("INFO: Created TensorFlow")]
    if not use_library:
        assert lines, output
        assert all(line[0] == "<" and line[2] == ">" for line in lines), lines
        assert any(line.startswith("<4>edgepose.daemon: model.num_threads") or line.startswith("<6>") for line in lines)
        return
    assert journal is not None
    assert lines == [], f"log lines went to stderr as well as the journal: {lines}"
    records = [message for _, message in journal.messages]
    assert records, "nothing reached the journal socket"
    assert all("SYSLOG_IDENTIFIER=edgepose\n" in record for record in records), records
    assert all("EDGEPOSE_DEVICE_ID=journaled\n" in record for record in records), records
    daemon = [record for record in records if "MESSAGE=edgepose.daemon: " in record]
    assert daemon and all(re.search(r"^PRIORITY=[2-7]$", record, re.MULTILINE) for record in daemon), records


def test_sighup_rebuilds_camera_model_and_mqtt_that_changed(
    broker: Broker, subscribe: Any, model_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "edgepose.yaml"
    config.write_text(
        f"device_id: rebuild\ncamera:\n  source: synthetic:20\n  width: 640\nmodel:\n  smart_crop: true\n"
        f"mqtt:\n  host: {broker.host}\n  port: {broker.port}\n  base_topic: before\n"
    )
    notify = NotifySocket(str(tmp_path / "n.sock"))
    collector = subscribe(broker, "#")
    process = _start_with_config(config, model_dir, notify)
    try:
        assert notify.wait_for("READY=1"), "no READY=1"
        before = json.loads(collector.wait_for("before/rebuild/keypoints", 3, timeout_s=30)[-1])
        assert before["frame"]["width"] == 640
        config.write_text(
            config.read_text()
            .replace("width: 640", "width: 320")
            .replace("smart_crop: true", "smart_crop: false")
            .replace("base_topic: before", "base_topic: after")
        )
        process.send_signal(signal.SIGHUP)
        assert len(notify.wait_for("READY=1", count=2, timeout_s=60)) == 2
        after = [json.loads(p) for p in collector.wait_for("after/rebuild/keypoints", 3, timeout_s=30)]
        assert len(after) >= 3, "no keypoints on the new base topic after reload"
        assert all(p["frame"]["width"] == 320 for p in after)
        # Without smart crop every frame is the plain letterbox: 320x480 padded 80 px left and right.
        assert all(p["crop"] == {"ymin": 0.0, "xmin": -0.25, "ymax": 1.0, "xmax": 1.25} for p in after)
        assert [p.decode() for p in collector.wait_for("before/rebuild/status", 2, timeout_s=30)][-1] == "offline"
        assert [p.decode() for p in collector.wait_for("after/rebuild/status", 1, timeout_s=30)][-1] == "online"
        seqs = [p["seq"] for p in after]
        assert seqs[0] > before["seq"], "seq restarted on reload; it counts per run"
    finally:
        code, stderr, _ = _stop(process)
        notify.close()
    assert code == 0, stderr
    assert "configuration reloaded; changed: camera, model, mqtt" in stderr
