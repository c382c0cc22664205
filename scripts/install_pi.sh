#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Install edgepose as a systemd service on Raspberry Pi OS Bookworm (or Ubuntu for Raspberry Pi).
# Safe to run again: every step checks what is already there. Run with --help for the options.
set -euo pipefail
# The service user must be able to read the venv and the unit, whatever root's umask is.
umask 022

readonly UNIT_NAME=edgepose.service
readonly SERVICE_USER=edgepose
readonly CORAL_KEY_URL=https://packages.cloud.google.com/apt/doc/apt-key.gpg
readonly CORAL_KEYRING=/usr/share/keyrings/coral-edgetpu.gpg
readonly CORAL_LIST=/etc/apt/sources.list.d/coral-edgetpu.list
readonly CORAL_REPO_LINE="deb [signed-by=${CORAL_KEYRING}] https://packages.cloud.google.com/apt coral-edgetpu-stable main"
# picamera2 and libcamera come from apt (they are built against the system libcamera and
# cannot be pip-installed); python3-systemd gives the daemon sd_notify and the journal; procps
# has /bin/kill, which the unit's ExecReload runs (minimal images leave it out).
readonly APT_PACKAGES=(python3-venv python3-pip python3-systemd procps)
readonly APT_CAMERA_PACKAGE=python3-picamera2

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$SCRIPT_DIR")"
readonly SCRIPT_DIR REPO_ROOT

ROOT=""
DRY_RUN=0
CORAL=""
START=1
FETCH_MODELS=1
PYTHON=""
DEPS_FROM=""
MIRRORS=()
START_FAILED=0
CONFIG_OK=1

usage() {
    cat <<'EOF'
Usage: sudo scripts/install_pi.sh [OPTIONS]

Installs edgepose from this source tree as the systemd service edgepose.service:
  apt packages   python3-picamera2 (when the distribution has it), python3-venv, python3-pip,
                 python3-systemd, procps; with --coral also the Coral apt repository and libedgetpu
  user           system user "edgepose" in the groups video and plugdev (plugdev is created
                 if missing), home /var/lib/edgepose, no login shell
  /opt/edgepose/venv             virtualenv with --system-site-packages (picamera2 comes from
                                 apt) and edgepose pip-installed from this tree
  /etc/edgepose/edgepose.yaml    from config/edgepose.yaml, ONLY IF ABSENT: an existing config is
                                 never overwritten (its owner and mode are reset to root:edgepose 0640)
  /var/lib/edgepose/models       the configured model (and its EdgeTPU twin) with checked sha256
  /etc/systemd/system/edgepose.service   then daemon-reload, enable --now

Options:
  --coral          add Coral's apt repository and install libedgetpu1-std (USB Accelerator)
  --coral-max      the same with libedgetpu1-max: maximum EdgeTPU clock. WARNING: at the max
                   clock the USB Accelerator gets hot enough to burn you; use -std unless you
                   need the speed and the device sits where nobody touches it
  --mirror DIR     copy models from DIR instead of downloading them (repeatable); passed on to
                   `edgepose models fetch --mirror`. $EDGEPOSE_MODEL_MIRROR (DIR[:DIR...]) works too
  --skip-models    do not fetch models (the service fails with exit 66 until they are fetched)
  --no-start       enable the service but do not start (or restart) it
  --python PATH    interpreter that creates the virtualenv (default: /usr/bin/python3, whose
                   dist-packages hold picamera2 and python3-systemd)
  --deps-from PY   for CI and tests: pip-install edgepose with --no-deps and make PY's
                   site-packages visible to the new venv through a .pth file, instead of
                   downloading ~100 MB of dependencies. Implies --python PY unless given
  --root DIR       install into the staging root DIR instead of /: no apt, no systemctl, no
                   change to the host's users. The user and groups are written to
                   DIR/etc/{passwd,group} with systemd-sysusers --root, files get those numeric
                   owners, and "enable" is the wants/ symlink. The venv is not relocatable: this
                   is for CI and for inspecting the layout, not for building images
  --dry-run        print every action without doing any of it
  -h, --help       show this help

Exit status: 0 installed (and started), 1 the install failed, 3 installed but the service did
not start (its journal is shown; fix the cause, e.g. the config, and `systemctl restart edgepose`).

After installing:
  journalctl -u edgepose -f                       follow the daemon's log
  mosquitto_sub -h BROKER -t 'edgepose/+/#' -v    watch what it publishes
Uninstall: scripts/uninstall_pi.sh (keeps config and models unless --purge).
EOF
}

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# write_file DEST MODE: writes stdin to DEST (atomically, via a temporary file next to it).
write_file() {
    local dest=$1 mode=$2 content tmp
    content="$(cat)"
    if [[ -f $dest ]] && [[ "$(cat "$dest")" == "$content" ]] && [[ "$(stat -c %a "$dest")" == "${mode#0}" ]]; then
        return 0
    fi
    printf '+ write %q (mode %s):\n' "$dest" "$mode"
    printf '%s\n' "$content" | sed 's/^/|   /'
    if [[ $DRY_RUN == 0 ]]; then
        tmp="$(mktemp "${dest}.XXXXXX")"
        printf '%s\n' "$content" >"$tmp"
        chmod "$mode" "$tmp"
        mv -f "$tmp" "$dest"
    fi
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --coral) CORAL=${CORAL:-std} ;;
        --coral-max) CORAL=max ;;
        --mirror)
            [[ $# -ge 2 ]] || die "--mirror needs a directory"
            MIRRORS+=("$2")
            shift
            ;;
        --mirror=*) MIRRORS+=("${1#*=}") ;;
        --skip-models) FETCH_MODELS=0 ;;
        --no-start) START=0 ;;
        --python)
            [[ $# -ge 2 ]] || die "--python needs a path"
            PYTHON=$2
            shift
            ;;
        --python=*) PYTHON=${1#*=} ;;
        --deps-from)
            [[ $# -ge 2 ]] || die "--deps-from needs a python interpreter"
            DEPS_FROM=$2
            shift
            ;;
        --deps-from=*) DEPS_FROM=${1#*=} ;;
        --root)
            [[ $# -ge 2 ]] || die "--root needs a directory"
            ROOT=$2
            shift
            ;;
        --root=*) ROOT=${1#*=} ;;
        --dry-run) DRY_RUN=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done

normalize_root
if [[ -z $PYTHON ]]; then
    PYTHON=${DEPS_FROM:-/usr/bin/python3}
fi

readonly ETC_DIR="$ROOT/etc/edgepose"
readonly CONFIG="$ETC_DIR/edgepose.yaml"
readonly STATE_DIR="$ROOT/var/lib/edgepose"
readonly MODEL_DIR="$STATE_DIR/models"
readonly OPT_DIR="$ROOT/opt/edgepose"
readonly VENV="$OPT_DIR/venv"
readonly UNIT_DIR="$ROOT/etc/systemd/system"
readonly UNIT_DEST="$UNIT_DIR/$UNIT_NAME"

CAN_CHOWN=1
if [[ $EUID -ne 0 ]]; then
    if [[ -z $ROOT && $DRY_RUN == 0 ]]; then
        die "run as root (sudo $0), or try --dry-run / --root DIR"
    fi
    CAN_CHOWN=0
    [[ -z $ROOT ]] || warn "not root: files in $ROOT keep your ownership instead of root/edgepose"
fi

for f in pyproject.toml config/edgepose.yaml systemd/$UNIT_NAME; do
    [[ -f "$REPO_ROOT/$f" ]] || die "$REPO_ROOT/$f is missing: run the script from an edgepose source tree"
done

# ----------------------------------------------------------------------------------------------
# Owners: names on the host, numeric IDs from the staging root's passwd/group under --root.

lookup_id() { # lookup_id passwd|group NAME -> numeric id, or the name itself when unknown (dry run)
    local db=$1 name=$2 id=""
    if [[ $name == root ]]; then
        echo 0
        return
    fi
    if [[ -n $ROOT ]]; then
        if [[ -f "$ROOT/etc/$db" ]]; then
            id="$(awk -F: -v n="$name" '$1 == n { print $3 }' "$ROOT/etc/$db")"
        fi
    else
        id="$(getent "$db" "$name" | cut -d: -f3)" || true
    fi
    echo "${id:-$name}"
}

# own PATH USER GROUP MODE [-R]: ownership (when we may chown) and mode.
own() {
    local path=$1 user=$2 group=$3 mode=$4 flags=()
    if [[ ${5:-} == -R ]]; then
        flags=(-R)
    fi
    if [[ $CAN_CHOWN == 1 ]]; then
        run chown "${flags[@]}" "$(lookup_id passwd "$user"):$(lookup_id group "$group")" "$path"
    fi
    run chmod "${flags[@]}" "$mode" "$path"
}

ensure_dir() { # ensure_dir PATH USER GROUP MODE
    if [[ ! -d $1 ]]; then
        run mkdir -p "$1"
    fi
    own "$1" "$2" "$3" "$4"
}

# ----------------------------------------------------------------------------------------------

# Where Raspberry Pi's own apt archive lives; python3-picamera2 comes from it on Raspberry Pi OS.
readonly PI_ARCHIVE_PATTERN='archive\.raspberrypi\.(com|org)'

# Is the Raspberry Pi archive in apt's sources? (EDGEPOSE_APT_ETC: tests point it at a stand-in.)
pi_archive_configured() {
    local etc=${EDGEPOSE_APT_ETC:-/etc/apt}
    grep -rqsE "$PI_ARCHIVE_PATTERN" "$etc/sources.list" "$etc/sources.list.d"
}

# camera_package_state: "available", "unreachable" (the Pi archive is configured but apt has no
# package list from it: the download failed) or "unpackaged" (this distribution has no picamera2).
camera_package_state() {
    if apt-cache show "$APT_CAMERA_PACKAGE" >/dev/null 2>&1; then
        echo available
        return
    fi
    local policy
    policy="$(apt-cache policy 2>/dev/null || true)"
    if pi_archive_configured && ! [[ $policy =~ $PI_ARCHIVE_PATTERN ]]; then
        echo unreachable
    else
        echo unpackaged
    fi
}

apt_packages() {
    if [[ -n $ROOT ]]; then
        say "apt: skipped (--root)"
        return
    fi
    command -v apt-get >/dev/null || die "apt-get not found: this installer is for Raspberry Pi OS / Debian / Ubuntu"
    export DEBIAN_FRONTEND=noninteractive
    say "apt: updating the package lists"
    # A failed download (an unreachable archive) is reported below, per package that needs it.
    run apt-get update || warn "apt-get update did not complete (see above); using the package lists apt has"
    local packages=("${APT_PACKAGES[@]}")
    case "$(camera_package_state)" in
        available) packages+=("$APT_CAMERA_PACKAGE") ;;
        unreachable)
            warn "$APT_CAMERA_PACKAGE: the Raspberry Pi archive is configured (${EDGEPOSE_APT_ETC:-/etc/apt})" \
                "but apt has no package list from it: the download failed (network, proxy or DNS?)." \
                "Fix that, check with 'sudo apt-get update', and run this installer again;" \
                "until then camera.source picamera2 will not work"
            ;;
        *)
            warn "$APT_CAMERA_PACKAGE is not packaged for this distribution (no Raspberry Pi archive" \
                "in apt's sources): camera.source picamera2 will not work; use a V4L2 camera" \
                "(camera.source: v4l2:/dev/video0)"
            ;;
    esac
    say "apt: installing ${packages[*]}"
    # --no-install-recommends: picamera2 recommends the Qt/OpenGL preview stack, useless headless.
    run apt-get install -y --no-install-recommends "${packages[@]}"
}

coral_packages() {
    [[ -n $CORAL ]] || return 0
    local package=libedgetpu1-$CORAL
    if [[ $CORAL == max ]]; then
        warn "libedgetpu1-max runs the EdgeTPU at its maximum clock: the USB Accelerator gets hot" \
            "enough to burn skin. Keep it out of reach, give it airflow, or use --coral instead."
    fi
    if [[ -n $ROOT ]]; then
        say "Coral: skipped (--root): would add $CORAL_LIST and install $package"
        return
    fi
    say "Coral: apt repository $CORAL_LIST and $package"
    run apt-get install -y --no-install-recommends ca-certificates curl gnupg
    if [[ ! -s $CORAL_KEYRING ]]; then
        # The key is served ASCII-armored at times and binary at others; apt's signed-by wants binary.
        local key=/tmp/coral-apt-key.XXXXXX
        if [[ $DRY_RUN == 0 ]]; then
            key="$(mktemp)"
        fi
        run curl -fsSL -o "$key" "$CORAL_KEY_URL"
        if [[ $DRY_RUN == 1 ]] || grep -q -- '-----BEGIN PGP' "$key"; then
            run gpg --batch --yes --dearmor -o "$CORAL_KEYRING" "$key"
        else
            run install -m 0644 "$key" "$CORAL_KEYRING"
        fi
        run rm -f "$key"
        run chmod 0644 "$CORAL_KEYRING"
    fi
    if [[ ! -f $CORAL_LIST ]] || [[ "$(cat "$CORAL_LIST")" != "$CORAL_REPO_LINE" ]]; then
        write_file "$CORAL_LIST" 0644 <<<"$CORAL_REPO_LINE"
    fi
    run apt-get update
    if [[ $CORAL == max ]]; then
        # The package asks (debconf) to confirm the max clock; the flag was the confirmation.
        printf '+ debconf-set-selections <<< %q\n' "libedgetpu1-max libedgetpu/accepted-eula select true"
        if [[ $DRY_RUN == 0 ]]; then
            debconf-set-selections <<<"libedgetpu1-max libedgetpu/accepted-eula select true"
        fi
    fi
    # std and max conflict with each other: apt swaps one for the other.
    run apt-get install -y --no-install-recommends "$package"
}

service_user() {
    say "user: $SERVICE_USER (groups video, plugdev)"
    # systemd-sysusers creates what is missing and leaves what exists; with --root it edits the
    # staging root's /etc/passwd and /etc/group instead of the host's.
    local sysusers=(systemd-sysusers)
    if [[ -n $ROOT ]]; then
        if [[ ! -d "$ROOT/etc" ]]; then
            run mkdir -p "$ROOT/etc"
        fi
        sysusers+=("--root=$ROOT")
    fi
    command -v systemd-sysusers >/dev/null || die "systemd-sysusers not found (package systemd)"
    run "${sysusers[@]}" --inline \
        'g plugdev - -' \
        "u $SERVICE_USER - \"edgepose pose-estimation daemon\" /var/lib/edgepose /usr/sbin/nologin" \
        "m $SERVICE_USER video" \
        "m $SERVICE_USER plugdev"
}

directories() {
    say "directories"
    ensure_dir "$OPT_DIR" root root 0755
    ensure_dir "$OPT_DIR/share" root root 0755
    ensure_dir "$ETC_DIR" root root 0755
    ensure_dir "$STATE_DIR" "$SERVICE_USER" "$SERVICE_USER" 0750
    ensure_dir "$MODEL_DIR" "$SERVICE_USER" "$SERVICE_USER" 0750
}

venv() {
    local venv_python="$VENV/bin/python"
    if [[ -x $venv_python ]] && "$venv_python" -c 'import sys' 2>/dev/null; then
        say "venv: $VENV exists, reusing it"
    else
        say "venv: creating $VENV with $PYTHON (--system-site-packages)"
        command -v "$PYTHON" >/dev/null || die "$PYTHON not found (apt install python3-venv, or --python)"
        if [[ -d $VENV ]]; then
            run rm -rf "$VENV"
        fi
        run "$PYTHON" -m venv --system-site-packages "$VENV"
    fi
    local pip=("$venv_python" -m pip --disable-pip-version-check --no-input install --upgrade)
    if [[ -n $DEPS_FROM ]]; then
        say "venv: dependencies from $DEPS_FROM (--deps-from), edgepose itself with --no-deps"
        local site pth
        site="$("$DEPS_FROM" -c 'import site; print("\n".join(site.getsitepackages()))')"
        if [[ $DRY_RUN == 1 ]]; then
            pth="$VENV/lib/pythonX.Y/site-packages/_edgepose_deps_from.pth"
        else
            pth="$("$venv_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_edgepose_deps_from.pth"
        fi
        write_file "$pth" 0644 <<<"$site"
        pip+=(--no-deps)
    fi
    # The [pi] extra pins numpy<2, which Debian's own numpy 1.24 (visible through
    # --system-site-packages) satisfies: pip then adds no numpy of its own to shadow it.
    say "venv: pip install ${REPO_ROOT}[pi]"
    run "${pip[@]}" "${REPO_ROOT}[pi]"
    # picamera2 comes from apt, compiled against Debian's numpy; a numpy pulled into the venv by a
    # pip dependency shadows it. Say so now rather than when the camera is first opened.
    if [[ $DRY_RUN == 0 ]] && "$PYTHON" -c 'import picamera2' >/dev/null 2>&1 &&
        ! "$venv_python" -c 'import picamera2' >/dev/null 2>&1; then
        warn "picamera2 imports with $PYTHON but not inside $VENV:" \
            "$("$venv_python" -c 'import picamera2' 2>&1 | tail -n 1)" \
            "(usually numpy 2 in the venv against Debian's numpy-1 builds; see docs/systemd.md)"
    fi
    run install -m 0644 "$REPO_ROOT/config/edgepose.yaml" "$OPT_DIR/share/edgepose.yaml.default"
    if [[ -f "$REPO_ROOT/docs/systemd.md" ]]; then
        run install -m 0644 "$REPO_ROOT/docs/systemd.md" "$OPT_DIR/share/systemd.md"
    fi
}

config() {
    if [[ -e $CONFIG ]]; then
        say "config: keeping the existing $CONFIG (never overwritten; the shipped default is" \
            "$OPT_DIR/share/edgepose.yaml.default)"
    else
        say "config: installing $CONFIG"
        run install -m 0640 "$REPO_ROOT/config/edgepose.yaml" "$CONFIG"
    fi
    # Ownership and mode are the installer's business, the content is the user's.
    own "$CONFIG" root "$SERVICE_USER" 0640
    if [[ $DRY_RUN == 0 ]]; then
        local rc=0
        "$VENV/bin/edgepose" config check "$CONFIG" || rc=$?
        if [[ $rc == 78 ]]; then
            CONFIG_OK=0
            warn "$CONFIG does not validate: the service will exit 78 and not restart until it is fixed"
        elif [[ $rc != 0 ]]; then
            die "$VENV/bin/edgepose does not run (config check exited $rc): the venv is broken"
        fi
    fi
    if [[ ! -e "$ETC_DIR/mqtt_password" ]]; then
        say "config: no $ETC_DIR/mqtt_password (fine without broker auth; see docs/systemd.md, Credentials)"
    fi
}

models() {
    if [[ $FETCH_MODELS == 0 ]]; then
        say "models: skipped (--skip-models)"
        return
    fi
    if [[ $CONFIG_OK == 0 ]]; then
        # Which models to fetch is read from the config; after fixing it:
        warn "models not fetched (the config is invalid). After fixing it: sudo -u $SERVICE_USER" \
            "${VENV#"$ROOT"}/bin/edgepose models fetch --config ${CONFIG#"$ROOT"} --dir ${MODEL_DIR#"$ROOT"}"
        return
    fi
    say "models: fetching into $MODEL_DIR${EDGEPOSE_MODEL_MIRROR:+ (EDGEPOSE_MODEL_MIRROR=$EDGEPOSE_MODEL_MIRROR)}"
    local fetch=("$VENV/bin/edgepose" models fetch --config "$CONFIG" --dir "$MODEL_DIR")
    local mirror
    for mirror in "${MIRRORS[@]}"; do
        fetch+=(--mirror "$mirror")
    done
    run "${fetch[@]}"
}

state_ownership() {
    # Fetched as root; also takes back files kept from an earlier install whose user had another UID.
    # (systemd's StateDirectory= would fix the owner at start too, but not the modes.)
    if [[ -d $STATE_DIR || $DRY_RUN == 1 ]]; then
        own "$STATE_DIR" "$SERVICE_USER" "$SERVICE_USER" u=rwX,g=rX,o= -R
    fi
}

unit() {
    say "unit: $UNIT_DEST"
    if [[ ! -d $UNIT_DIR ]]; then
        ensure_dir "$UNIT_DIR" root root 0755
    fi
    if [[ -f $UNIT_DEST ]] && cmp -s "$REPO_ROOT/systemd/$UNIT_NAME" "$UNIT_DEST"; then
        say "unit: unchanged"
    else
        run install -m 0644 "$REPO_ROOT/systemd/$UNIT_NAME" "$UNIT_DEST"
    fi
    own "$UNIT_DEST" root root 0644
}

activate() {
    if [[ -n $ROOT ]]; then
        # What `systemctl enable` does, without talking to a service manager.
        local wants="$UNIT_DIR/multi-user.target.wants"
        say "unit: enabling (symlink in $wants)"
        if [[ ! -d $wants ]]; then
            ensure_dir "$wants" root root 0755
        fi
        run ln -sfn "/etc/systemd/system/$UNIT_NAME" "$wants/$UNIT_NAME"
        return
    fi
    if [[ ! -d /run/systemd/system ]]; then
        # A chroot or a container without systemd: enable works offline, the rest needs PID 1.
        warn "systemd is not running here: enabling $UNIT_NAME without starting it"
        run systemctl enable "$UNIT_NAME"
        return
    fi
    local was_active=0
    if systemctl is-active --quiet "$UNIT_NAME"; then
        was_active=1
    fi
    run systemctl daemon-reload
    if [[ $START == 0 ]]; then
        run systemctl enable "$UNIT_NAME"
        say "unit: enabled, not started (--no-start): systemctl start edgepose"
        return
    fi
    # A unit that hit its start limit (an earlier failed install) refuses to start until reset.
    run systemctl reset-failed "$UNIT_NAME" 2>/dev/null || true
    if ! run systemctl enable --now "$UNIT_NAME"; then
        START_FAILED=1
    elif [[ $was_active == 1 ]] && ! run systemctl restart "$UNIT_NAME"; then
        # enable --now leaves a running service alone; restart it onto the new code.
        START_FAILED=1
    fi
}

main() {
    [[ $DRY_RUN == 0 ]] || say "dry run: printing the actions, changing nothing"
    [[ -z $ROOT ]] || say "staging root: $ROOT"
    apt_packages
    coral_packages
    service_user
    directories
    venv
    config
    models
    state_ownership
    unit
    activate
    cat <<EOF
==> done. Next:
    edit ${CONFIG#"$ROOT"} (mqtt.host at least), then: sudo systemctl restart edgepose
    journalctl -u edgepose -f                       # follow the log
    mosquitto_sub -h BROKER -t 'edgepose/+/#' -v    # watch the messages
EOF
    if [[ $START_FAILED == 1 ]]; then
        warn "everything is installed, but $UNIT_NAME did not start; its log says why:"
        journalctl -u "$UNIT_NAME" -n 15 --no-pager >&2 || true
        exit 3
    fi
}

main
