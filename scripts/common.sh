# shellcheck shell=bash
# Shared by install_pi.sh and uninstall_pi.sh (sourced, not run): messages, the dry-run-aware
# run(), and the --root normalisation. Expects DRY_RUN (0/1) and ROOT to be set by the caller.

say() { printf '==> %s\n' "$*"; }
warn() { printf '%s: warning: %s\n' "${0##*/}" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "${0##*/}" "$*" >&2
    exit 1
}

# Every change to the system goes through run(): printed, and executed unless --dry-run.
run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if [[ $DRY_RUN == 0 ]]; then
        "$@"
    fi
}

# normalize_root: an absolute --root without a trailing slash; / itself is refused.
normalize_root() {
    if [[ -n $ROOT ]]; then
        [[ $ROOT == /* ]] || ROOT="$PWD/$ROOT"
        ROOT="${ROOT%/}"
        [[ -n $ROOT ]] || die "--root / is the host itself: leave --root out"
    fi
}
