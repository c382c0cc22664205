#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Remove what scripts/install_pi.sh installed. Safe to run again; keeps config and models unless --purge.
set -euo pipefail

readonly UNIT_NAME=edgepose.service
readonly SERVICE_USER=edgepose

ROOT=""
DRY_RUN=0
PURGE=0

usage() {
    cat <<'EOF'
Usage: sudo scripts/uninstall_pi.sh [OPTIONS]

Removes what scripts/install_pi.sh added:
  edgepose.service    stopped, disabled, /etc/systemd/system/edgepose.service removed
  /opt/edgepose       the virtualenv and the shipped reference files
  user edgepose       and its group (video and plugdev stay: other software uses them)
Keeps, unless --purge:
  /etc/edgepose       edgepose.yaml, mqtt_password
  /var/lib/edgepose   fetched models
  /etc/systemd/system/edgepose.service.d   your drop-ins (systemctl edit edgepose)
Never removes apt packages (python3-picamera2, libedgetpu1-*, ...) or the Coral apt repository:
other software may use them. The commands to remove those are printed at the end.

Options:
  --purge       also remove /etc/edgepose, /var/lib/edgepose and the unit's drop-ins
  --root DIR    uninstall from the staging root DIR (as made by install_pi.sh --root DIR):
                no systemctl, the user is removed from DIR/etc/passwd and DIR/etc/group
  --dry-run     print every action without doing any of it
  -h, --help    show this help
EOF
}

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

while [[ $# -gt 0 ]]; do
    case $1 in
        --purge) PURGE=1 ;;
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
if [[ -n $ROOT ]]; then
    [[ -d $ROOT ]] || die "--root $ROOT: no such directory"
fi
if [[ $EUID -ne 0 && -z $ROOT && $DRY_RUN == 0 ]]; then
    die "run as root (sudo $0), or try --dry-run"
fi

readonly UNIT_DIR="$ROOT/etc/systemd/system"
readonly UNIT_FILE="$UNIT_DIR/$UNIT_NAME"
readonly WANTS_LINK="$UNIT_DIR/multi-user.target.wants/$UNIT_NAME"
readonly DROPIN_DIR="$UNIT_DIR/$UNIT_NAME.d"
readonly OPT_DIR="$ROOT/opt/edgepose"
readonly ETC_DIR="$ROOT/etc/edgepose"
readonly STATE_DIR="$ROOT/var/lib/edgepose"

remove() { # remove PATH...: rm -rf, only for what exists
    local path
    for path in "$@"; do
        if [[ -e $path || -L $path ]]; then
            run rm -rf -- "$path"
        fi
    done
}

has_entry() { # has_entry passwd|group NAME
    if [[ -n $ROOT ]]; then
        [[ -f "$ROOT/etc/$1" ]] && awk -F: -v n="$2" '$1 == n { found = 1 } END { exit !found }' "$ROOT/etc/$1"
    else
        getent "$1" "$2" >/dev/null
    fi
}

stop_unit() {
    if [[ -n $ROOT ]]; then
        say "unit: disabling (--root: removing the wants/ symlink)"
        remove "$WANTS_LINK"
        return
    fi
    if [[ ! -d /run/systemd/system ]]; then
        warn "systemd is not running here: disabling without stopping"
        if [[ -f $UNIT_FILE ]]; then
            run systemctl disable "$UNIT_NAME"
        fi
        return
    fi
    if systemctl cat "$UNIT_NAME" >/dev/null 2>&1; then
        say "unit: stopping and disabling $UNIT_NAME"
        run systemctl disable --now "$UNIT_NAME"
    else
        say "unit: $UNIT_NAME is not known to systemd"
    fi
}

remove_files() {
    say "unit file: $UNIT_FILE"
    remove "$UNIT_FILE"
    if [[ -z $ROOT && -d /run/systemd/system ]]; then
        run systemctl daemon-reload
        # Forget a failed state (and the start-limit counter) of the removed unit.
        run systemctl reset-failed "$UNIT_NAME" 2>/dev/null || true
    fi
    say "program: $OPT_DIR"
    remove "$OPT_DIR"
}

remove_user() {
    local prefix=()
    if [[ -n $ROOT ]]; then
        prefix=(--prefix "$ROOT")
    fi
    if has_entry passwd "$SERVICE_USER"; then
        say "user: removing $SERVICE_USER"
        # userdel also takes the user out of video and plugdev.
        run userdel "${prefix[@]}" "$SERVICE_USER"
    else
        say "user: $SERVICE_USER does not exist"
    fi
    # userdel removes the user's own group only when login.defs says USERGROUPS_ENAB yes.
    if has_entry group "$SERVICE_USER"; then
        if [[ $DRY_RUN == 1 ]]; then
            say "group: $SERVICE_USER: groupdel, if userdel leaves it behind"
        else
            run groupdel "${prefix[@]}" "$SERVICE_USER"
        fi
    fi
}

data() {
    if [[ $PURGE == 1 ]]; then
        say "purge: config $ETC_DIR, models $STATE_DIR, drop-ins $DROPIN_DIR"
        remove "$ETC_DIR" "$STATE_DIR" "$DROPIN_DIR"
    else
        local kept=()
        local path
        for path in "$ETC_DIR" "$STATE_DIR" "$DROPIN_DIR"; do
            if [[ -e $path ]]; then
                kept+=("$path")
            fi
        done
        if [[ ${#kept[@]} -gt 0 ]]; then
            say "kept (remove with --purge): ${kept[*]}"
            say "their files now belong to the removed user's numeric ID; a reinstall takes them back"
        fi
    fi
}

main() {
    [[ $DRY_RUN == 0 ]] || say "dry run: printing the actions, changing nothing"
    [[ -z $ROOT ]] || say "staging root: $ROOT"
    stop_unit
    remove_files
    remove_user
    data
    cat <<'EOF'
==> done. Not removed (shared with other software); if nothing else needs them:
    sudo apt-get remove libedgetpu1-std libedgetpu1-max python3-picamera2
    sudo rm /etc/apt/sources.list.d/coral-edgetpu.list /usr/share/keyrings/coral-edgetpu.gpg
EOF
}

main
