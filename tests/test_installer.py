"""scripts/install_pi.sh and scripts/uninstall_pi.sh, run for real into a staging root (--root).

The staging install is the same code path as on a Pi minus apt and systemctl: the user and groups
go into the staging root's /etc/passwd and /etc/group (systemd-sysusers --root), a real venv is
created and edgepose is really built and pip-installed into it; only its dependencies come from
this test interpreter (--deps-from) instead of ~100 MB of downloads. Models come from the mirror.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "scripts" / "install_pi.sh"
UNINSTALL = REPO / "scripts" / "uninstall_pi.sh"
SCRIPTS = [INSTALL, UNINSTALL]
SHARED = Path(os.environ.get("EDGEPOSE_SHARED_DIR", REPO.parent / "shared"))
MIRRORS = [SHARED / "models", SHARED / "testdata" / "pose"]
CPU_MODEL = "lite-model_movenet_singlepose_lightning_tflite_int8_4.tflite"
EDGETPU_MODEL = "movenet_single_pose_lightning_ptq_edgetpu.tflite"
AS_ROOT = os.geteuid() == 0

needs_sysusers = pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
needs_mirror = pytest.mark.skipif(not (SHARED / "models" / CPU_MODEL).is_file(), reason="model mirror missing")
owners_checked = pytest.mark.skipif(not AS_ROOT, reason="file owners can only be set (and checked) as root")


def script_env() -> dict[str, str]:
    env = dict(os.environ)
    env["EDGEPOSE_MODEL_MIRROR"] = os.pathsep.join(str(m) for m in MIRRORS)
    return env


def run(script: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, env=script_env(), timeout=600, check=False
    )
    if check:
        assert proc.returncode == 0, (
            f"{script.name} {' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(INSTALL, "--root", str(root), "--deps-from", sys.executable, *extra)


class Staged(NamedTuple):
    root: Path
    proc: subprocess.CompletedProcess[str]


class Entry(NamedTuple):
    kind: str
    mode: int
    uid: int
    gid: int
    digest: str  # file content hash, or symlink target


def snapshot(root: Path, skip: tuple[str, ...] = ("opt/edgepose/venv",)) -> dict[str, Entry]:
    """Every path under root with type, mode, owner and content; the venv's insides are skipped
    (pip rewrites them on every install) but the venv directory itself is recorded."""
    out: dict[str, Entry] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if any(rel.startswith(s + "/") for s in skip):
            continue
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            kind, digest = "link", os.readlink(path)
        elif stat.S_ISDIR(st.st_mode):
            kind, digest = "dir", ""
        else:
            kind, digest = "file", hashlib.sha256(path.read_bytes()).hexdigest()
        out[rel] = Entry(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, digest)
    return out


def ids(root: Path, db: str, name: str) -> list[str]:
    for line in (root / "etc" / db).read_text(encoding="utf-8").splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    raise AssertionError(f"{name} not in {root}/etc/{db}")


def project_version() -> str:
    match = re.search(r'(?m)^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert match
    return match.group(1)


def mirror_sha256(name: str) -> str:
    sums = (SHARED / "models" / "SHA256SUMS").read_text(encoding="utf-8")
    for line in sums.splitlines():
        digest, _, file = line.partition("  ")
        if file.strip() == name:
            return digest
    raise AssertionError(f"{name} not in SHA256SUMS")


# ---------------------------------------------------------------------------------------------
# Static checks


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("script", [*SCRIPTS, REPO / "scripts" / "common.sh"], ids=lambda p: p.name)
def test_shellcheck_clean(script: Path) -> None:
    # -x follows `source common.sh`, so the sourced helpers are checked in context too.
    proc = subprocess.run(
        ["shellcheck", "-x", "--shell=bash", "--severity=style", str(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_strict_mode_and_executable(script: Path) -> None:
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(script, os.X_OK), f"chmod +x {script}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help(script: Path) -> None:
    proc = run(script, "--help")
    assert proc.stdout.startswith("Usage:")
    for option in ("--root", "--dry-run", "--help"):
        assert option in proc.stdout
    assert run(script, "-h").stdout == proc.stdout


def test_install_help_names_every_option() -> None:
    text = run(INSTALL, "--help").stdout
    for option in ("--coral", "--coral-max", "--mirror", "--no-start", "--skip-models", "--python", "--deps-from"):
        assert option in text
    assert "burn" in text  # the --coral-max heat warning
    assert "journalctl -u edgepose -f" in text
    assert "mosquitto_sub -h BROKER -t 'edgepose/+/#' -v" in text
    assert "--purge" in run(UNINSTALL, "--help").stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_unknown_option_fails(script: Path) -> None:
    proc = run(script, "--no-such-option", check=False)
    assert proc.returncode != 0
    assert "unknown option" in proc.stderr


# ---------------------------------------------------------------------------------------------
# --dry-run


def test_install_dry_run_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "stage"
    root.mkdir()
    proc = run(INSTALL, "--dry-run", "--root", str(root), "--deps-from", sys.executable, "--mirror", str(MIRRORS[0]))
    assert list(root.iterdir()) == []
    out = proc.stdout
    # Every action is announced.
    assert "systemd-sysusers --root=" in out
    assert f"-m venv --system-site-packages {root}/opt/edgepose/venv" in out
    assert f"install -m 0640 {REPO}/config/edgepose.yaml {root}/etc/edgepose/edgepose.yaml" in out
    assert (
        f"{root}/opt/edgepose/venv/bin/edgepose models fetch --config {root}/etc/edgepose/edgepose.yaml"
        f" --dir {root}/var/lib/edgepose/models --mirror {MIRRORS[0]}"
    ) in out
    assert f"{root}/etc/systemd/system/edgepose.service" in out
    actions = [line for line in out.splitlines() if line.startswith("+ ")]
    assert not [a for a in actions if a.startswith(("+ apt-get", "+ systemctl", "+ curl", "+ gpg"))], actions


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="not a Debian-like host")
def test_install_dry_run_without_root_dir_changes_nothing() -> None:
    """Against the real / : prints apt and systemctl steps, executes none of them."""
    before = (Path("/etc/systemd/system/edgepose.service").exists(), Path("/opt/edgepose").exists())
    proc = run(INSTALL, "--dry-run", "--skip-models", "--deps-from", sys.executable)
    assert "+ apt-get install -y --no-install-recommends" in proc.stdout
    assert "systemctl" in proc.stdout
    assert (Path("/etc/systemd/system/edgepose.service").exists(), Path("/opt/edgepose").exists()) == before


# ---------------------------------------------------------------------------------------------
# A real install into a staging root


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Staged:
    if shutil.which("systemd-sysusers") is None:
        pytest.skip("systemd-sysusers missing")
    if not (SHARED / "models" / CPU_MODEL).is_file():
        pytest.skip(f"model mirror missing: {SHARED / 'models'}")
    root = tmp_path_factory.mktemp("stage")
    host_user = subprocess.run(["getent", "passwd", "edgepose"], capture_output=True, text=True).stdout
    host_unit = Path("/etc/systemd/system/edgepose.service").exists()
    proc = install(root)
    # --root must not touch the host.
    assert subprocess.run(["getent", "passwd", "edgepose"], capture_output=True, text=True).stdout == host_user
    assert Path("/etc/systemd/system/edgepose.service").exists() == host_unit
    return Staged(root, proc)


EXPECTED = [
    # path, kind, mode, owner, group
    ("etc/edgepose", "dir", 0o755, "root", "root"),
    ("etc/edgepose/edgepose.yaml", "file", 0o640, "root", "edgepose"),
    ("etc/systemd/system/edgepose.service", "file", 0o644, "root", "root"),
    ("opt/edgepose", "dir", 0o755, "root", "root"),
    ("opt/edgepose/venv", "dir", 0o755, "root", "root"),
    ("opt/edgepose/share/edgepose.yaml.default", "file", 0o644, "root", "root"),
    ("opt/edgepose/share/systemd.md", "file", 0o644, "root", "root"),
    ("var/lib/edgepose", "dir", 0o750, "edgepose", "edgepose"),
    ("var/lib/edgepose/models", "dir", 0o750, "edgepose", "edgepose"),
    (f"var/lib/edgepose/models/{CPU_MODEL}", "file", 0o640, "edgepose", "edgepose"),
    (f"var/lib/edgepose/models/{EDGETPU_MODEL}", "file", 0o640, "edgepose", "edgepose"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("rel", "kind", "mode", "owner", "group"), EXPECTED, ids=[e[0] for e in EXPECTED])
def test_file_lands_with_mode(staged: Staged, rel: str, kind: str, mode: int, owner: str, group: str) -> None:
    root, _ = staged
    path = root / rel
    assert path.is_dir() if kind == "dir" else path.is_file(), f"{rel} missing"
    assert stat.S_IMODE(path.stat().st_mode) == mode, f"{rel}: {oct(stat.S_IMODE(path.stat().st_mode))}"


@pytest.mark.slow
@owners_checked
@pytest.mark.parametrize(("rel", "kind", "mode", "owner", "group"), EXPECTED, ids=[e[0] for e in EXPECTED])
def test_file_lands_with_owner(staged: Staged, rel: str, kind: str, mode: int, owner: str, group: str) -> None:
    root, _ = staged
    st = (root / rel).stat()
    uid = 0 if owner == "root" else int(ids(root, "passwd", owner)[2])
    gid = 0 if group == "root" else int(ids(root, "group", group)[2])
    assert (st.st_uid, st.st_gid) == (uid, gid), rel


@pytest.mark.slow
def test_unit_installed_and_enabled(staged: Staged) -> None:
    root, _ = staged
    unit = root / "etc/systemd/system/edgepose.service"
    assert unit.read_bytes() == (REPO / "systemd/edgepose.service").read_bytes()
    link = root / "etc/systemd/system/multi-user.target.wants/edgepose.service"
    assert link.is_symlink() and os.readlink(link) == "/etc/systemd/system/edgepose.service"


@pytest.mark.slow
def test_user_and_groups_in_the_staging_root(staged: Staged) -> None:
    root, _ = staged
    user = ids(root, "passwd", "edgepose")
    assert user[5:] == ["/var/lib/edgepose", "/usr/sbin/nologin"]
    assert int(user[2]) < 1000, "a system user"
    assert ids(root, "group", "edgepose")[2] == user[3], "primary group edgepose"
    for group in ("video", "plugdev"):
        assert "edgepose" in ids(root, "group", group)[3].split(",")


@pytest.mark.slow
def test_config_is_the_shipped_one_and_no_password_file(staged: Staged) -> None:
    root, _ = staged
    assert (root / "etc/edgepose/edgepose.yaml").read_bytes() == (REPO / "config/edgepose.yaml").read_bytes()
    assert not (root / "etc/edgepose/mqtt_password").exists()


@pytest.mark.slow
def test_venv_has_system_site_packages_and_a_working_console_script(staged: Staged) -> None:
    root, _ = staged
    venv = root / "opt/edgepose/venv"
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text(encoding="utf-8")
    edgepose = venv / "bin/edgepose"
    assert os.access(edgepose, os.X_OK)
    version = subprocess.run([str(edgepose), "--version"], capture_output=True, text=True, check=False)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"edgepose {project_version()}"
    # edgepose is imported from the venv (really installed there), not from the source tree.
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import edgepose; print(edgepose.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    assert where.stdout.startswith(str(venv)), where.stdout
    check = subprocess.run(
        [str(edgepose), "config", "check", str(root / "etc/edgepose/edgepose.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith("OK ")


@pytest.mark.slow
def test_models_fetched_with_the_mirror_checksums(staged: Staged) -> None:
    root, proc = staged
    models = root / "var/lib/edgepose/models"
    for name in (CPU_MODEL, EDGETPU_MODEL):  # backend: auto fetches the EdgeTPU twin too
        assert hashlib.sha256((models / name).read_bytes()).hexdigest() == mirror_sha256(name)
    assert "sha256 verified" in proc.stdout
    assert not list(models.glob("*.part"))


# ---------------------------------------------------------------------------------------------
# Re-running, uninstalling, purging


@pytest.mark.slow
@needs_sysusers
@needs_mirror
def test_reinstall_uninstall_purge_cycle(tmp_path: Path) -> None:
    root = tmp_path / "stage"
    install(root)
    config = root / "etc/edgepose/edgepose.yaml"
    config.write_text(config.read_text(encoding="utf-8") + "# changed by the admin\n", encoding="utf-8")
    before = snapshot(root)

    # Idempotent: a second run changes nothing outside the venv and keeps the modified config.
    second = install(root)
    assert "keeping the existing" in second.stdout
    assert snapshot(root) == before
    assert config.read_text(encoding="utf-8").endswith("# changed by the admin\n")
    assert (root / "opt/edgepose/venv/bin/edgepose").exists()

    # Uninstall --dry-run changes nothing.
    everything = snapshot(root, skip=())
    dry = run(UNINSTALL, "--root", str(root), "--dry-run")
    assert "+ userdel --prefix" in dry.stdout
    assert snapshot(root, skip=()) == everything

    # Uninstall keeps config and models, removes unit, venv and user.
    run(UNINSTALL, "--root", str(root))
    assert not (root / "etc/systemd/system/edgepose.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/edgepose.service").is_symlink()
    assert not (root / "opt/edgepose").exists()
    passwd = (root / "etc/passwd").read_text(encoding="utf-8")
    group = (root / "etc/group").read_text(encoding="utf-8")
    assert "edgepose" not in passwd
    assert "edgepose" not in group  # its own group, and its membership in video and plugdev
    assert re.search(r"(?m)^video:", group) and re.search(r"(?m)^plugdev:", group), "shared groups stay"
    assert config.read_text(encoding="utf-8").endswith("# changed by the admin\n")
    assert (root / "var/lib/edgepose/models" / CPU_MODEL).is_file()

    # Idempotent too.
    again = run(UNINSTALL, "--root", str(root))
    assert "does not exist" in again.stdout

    # Reinstalling over the kept config and models takes them back.
    install(root)
    assert config.read_text(encoding="utf-8").endswith("# changed by the admin\n")
    if AS_ROOT:
        gid = int(ids(root, "group", "edgepose")[2])
        assert config.stat().st_gid == gid
        assert (root / "var/lib/edgepose/models" / CPU_MODEL).stat().st_gid == gid

    # --purge removes config and models as well.
    run(UNINSTALL, "--root", str(root), "--purge")
    for rel in ("etc/edgepose", "var/lib/edgepose", "opt/edgepose", "etc/systemd/system/edgepose.service"):
        assert not (root / rel).exists(), rel


# ---------------------------------------------------------------------------------------------
# Opt-in: the real thing under systemd as PID 1, in a throw-away container of this very host


def _wait_for(predicate, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("EDGEPOSE_TEST_NSPAWN") != "1",
    reason="opt-in (EDGEPOSE_TEST_NSPAWN=1, set by CI and `make test-nspawn`): boots this host's OS in a container",
)
def test_real_install_start_and_uninstall_under_systemd(tmp_path: Path) -> None:
    """Boots an overlay of / (writes go to tmp_path) with systemd as PID 1, runs install_pi.sh without
    --root (apt, systemd-sysusers, venv with every dependency from the index, systemctl), starts the
    unit with a synthetic camera, checks what systemd reports, then uninstalls with --purge."""
    import uuid

    # Asked for explicitly (CI asks): fail rather than skip when the machine cannot do it.
    assert AS_ROOT, "EDGEPOSE_TEST_NSPAWN=1 needs root"
    assert shutil.which("systemd-nspawn"), "EDGEPOSE_TEST_NSPAWN=1 needs systemd-nspawn: apt install systemd-container"

    import psutil

    upper, work, merged = (tmp_path / d for d in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir()
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir=/,upperdir={upper},workdir={work}", str(merged)],
        check=True,
    )
    log = (tmp_path / "nspawn.log").open("w")
    nspawn = subprocess.Popen(
        [
            "systemd-nspawn",
            "-D",
            str(merged),
            "--register=no",
            "--keep-unit",
            "--link-journal=no",
            f"--uuid={uuid.uuid4().hex}",
            "--machine=edgepose-test",
            f"--bind-ro={REPO}",
            f"--bind-ro={SHARED}",
            "-b",
            "--console=pipe",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # The container's PID 1 (systemd) is a child of systemd-nspawn; an intermediate child may come first.
        leader = _wait_for(
            lambda: next((p for p in psutil.Process(nspawn.pid).children() if p.name() == "systemd"), None),
            30,
            "systemd in the container",
        )

        def ct(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            proc = subprocess.run(
                ["nsenter", "-t", str(leader.pid), "-a", *cmd], capture_output=True, text=True, timeout=900, check=False
            )
            assert not check or proc.returncode == 0, f"{cmd}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            return proc

        _wait_for(
            lambda: ct("systemctl", "is-system-running", check=False).stdout.strip() in ("running", "degraded"),
            120,
            "the container to boot",
        )
        mirror = os.pathsep.join(str(m) for m in MIRRORS)
        ct("env", f"EDGEPOSE_MODEL_MIRROR={mirror}", "bash", str(INSTALL), "--no-start")
        ct("sed", "-i", "s/^  source: auto$/  source: synthetic:5/", "/etc/edgepose/edgepose.yaml")
        ct("systemctl", "start", "edgepose")  # Type=notify: returns once READY=1 arrived
        time.sleep(3)
        show = dict(
            line.split("=", 1)
            for line in ct(
                "systemctl",
                "show",
                "edgepose",
                "-p",
                "ActiveState",
                "-p",
                "SubState",
                "-p",
                "NRestarts",
                "-p",
                "StatusText",
                "-p",
                "WatchdogUSec",
                "-p",
                "WatchdogTimestampMonotonic",
            ).stdout.splitlines()
        )
        journal = ct("journalctl", "-u", "edgepose", "--no-pager").stdout
        assert show["ActiveState"] == "active" and show["NRestarts"] == "0", f"{show}\n{journal}"
        assert show["StatusText"].startswith("running"), show
        assert show["WatchdogUSec"] == "30s"
        assert int(show["WatchdogTimestampMonotonic"]) > 0, show  # systemd has received a WATCHDOG=1
        assert "XNNPACK delegate" in journal
        # No mqtt_password file: the SetCredential= fallback, not 243/CREDENTIALS.
        assert ct("cat", "/run/credentials/edgepose.service/mqtt_password").stdout == "\n"
        exposure = re.search(
            r"Overall exposure level for edgepose\.service:\s*(\d+\.\d+)",
            ct("systemd-analyze", "security", "edgepose", "--no-pager").stdout,
        )
        assert exposure and float(exposure.group(1)) <= 2.0
        ct("systemctl", "reload", "edgepose")
        assert ct("systemctl", "is-active", "edgepose").stdout.strip() == "active"

        ct("bash", str(UNINSTALL), "--purge")
        assert ct("getent", "passwd", "edgepose", check=False).returncode != 0
        assert ct("systemctl", "cat", "edgepose", check=False).returncode != 0
        for path in ("/etc/edgepose", "/var/lib/edgepose", "/opt/edgepose"):
            assert ct("test", "!", "-e", path, check=False).returncode == 0, path
    finally:
        nspawn.terminate()  # systemd-nspawn turns SIGTERM into a clean power-off of the container
        try:
            nspawn.wait(60)
        except subprocess.TimeoutExpired:
            nspawn.kill()
            nspawn.wait(10)
        log.close()
        subprocess.run(["umount", "-l", str(merged)], check=False)


# ---------------------------------------------------------------------------------------------
# apt: python3-picamera2 available, or the Pi archive configured but unreachable, or not packaged

PI_SOURCE = "deb http://archive.raspberrypi.com/debian/ bookworm main\n"
PI_POLICY = " 500 http://archive.raspberrypi.com/debian bookworm/main arm64 Packages\n"
DEBIAN_POLICY = " 500 http://deb.debian.org/debian bookworm/main arm64 Packages\n"


@pytest.mark.parametrize(
    ("configured", "policy", "packaged", "expected"),
    [
        (True, DEBIAN_POLICY + PI_POLICY, True, "available"),
        (True, DEBIAN_POLICY, False, "is configured ("),
        (False, DEBIAN_POLICY, False, "is not packaged for this distribution"),
    ],
    ids=["available", "configured-but-unreachable", "not-packaged"],
)
def test_camera_package_unreachable_archive_is_not_called_unpackaged(
    tmp_path: Path, configured: bool, policy: str, packaged: bool, expected: str
) -> None:
    """apt-get/apt-cache stand-ins on PATH and a stand-in /etc/apt; a dry run against / otherwise."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "apt-cache").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = show ]; then exit {0 if packaged else 100}; fi\n'
        f"if [ \"$1\" = policy ]; then printf '%s' '{policy}'; fi\n"
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    etc = tmp_path / "etc-apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text("deb http://deb.debian.org/debian bookworm main\n")
    if configured:
        (etc / "sources.list.d" / "raspi.list").write_text(PI_SOURCE)
    env = script_env() | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "EDGEPOSE_APT_ETC": str(etc)}
    proc = subprocess.run(
        ["bash", str(INSTALL), "--dry-run", "--skip-models", "--no-start", "--deps-from", sys.executable],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream: the order of the warning and the progress line shows
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    installing = next(i for i, line in enumerate(lines) if line.startswith("==> apt: installing"))
    if expected == "available":
        assert lines[installing].endswith("procps python3-picamera2"), lines[installing]
        assert "python3-picamera2" not in "\n".join(line for line in lines if "warning" in line)
        return
    warning = next(i for i, line in enumerate(lines) if "warning: python3-picamera2" in line)
    assert expected in lines[warning], lines[warning]
    assert warning < installing, "the progress line comes after the check"
    assert "python3-picamera2" not in lines[installing]
    if configured:
        assert "the download failed" in lines[warning] and "not packaged" not in lines[warning]
