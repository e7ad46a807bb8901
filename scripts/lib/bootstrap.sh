# Shared by scripts/test and scripts/demo: install what is missing, idempotently, then activate .venv.
# Sourced, not run. Needs root for the apt step on a fresh Debian machine (it is skipped when all
# packages are already there).

OPENAIFS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OPENAIFS_APT_PACKAGES=(fuse3 libfuse3-dev pkg-config attr rsync curl)

openaifs_log() { printf '[openaifs] %s\n' "$*" >&2; }

openaifs_ensure_apt() {
    local missing=() p
    for p in "${OPENAIFS_APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        openaifs_log "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
        return 1
    fi
    openaifs_log "installing ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

openaifs_ensure_venv() {
    local venv="$OPENAIFS_ROOT/.venv" stamp want
    if [ ! -x "$venv/bin/python" ]; then
        openaifs_log "creating $venv"
        python3 -m venv "$venv"
    fi
    # Reinstall only when pyproject.toml changed since the last install.
    want=$(sha256sum "$OPENAIFS_ROOT/pyproject.toml" | cut -d' ' -f1)
    stamp="$venv/.openaifs-installed"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        openaifs_log "installing openaifs and its test dependencies into .venv (pyfuse3 builds from source)"
        "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
        "$venv/bin/python" -m pip install -q -e "$OPENAIFS_ROOT[test]"
        echo "$want" > "$stamp"
    fi
    # Byte-compile our own modules (an installed package ships them compiled; an editable one does
    # not, and with PYTHONDONTWRITEBYTECODE set every mount would compile them again: ~20 ms a start).
    "$venv/bin/python" -m compileall -q "$OPENAIFS_ROOT/openaifs" >/dev/null || true
    # shellcheck disable=SC1091
    . "$venv/bin/activate"
}

openaifs_bootstrap() {
    openaifs_ensure_apt && openaifs_ensure_venv
}
