#!/usr/bin/env bash
# scripts/setup-avocado.sh — install the avocado test harness (tests/avocado)
# into the project's venv ($CACHE/venv). Idempotent: does nothing when the
# pinned versions are installed already. Prints the venv's python path.
#
# Pinned: avocado-framework 113.0 with its yaml-to-mux varianter and HTML
# result plugins, and qemu.qmp 0.0.6 (QMP client).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VENV="$CACHE/venv"
AVOCADO_VERSION=113.0
PKGS=(
    "avocado-framework==$AVOCADO_VERSION"
    "avocado-framework-plugin-varianter-yaml-to-mux==$AVOCADO_VERSION"
    "avocado-framework-plugin-result-html==$AVOCADO_VERSION"
    "qemu.qmp==0.0.6"
)
mkdir -p "$CACHE"
if [[ ! -x $VENV/bin/python ]]; then
    log "creating $VENV"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        # Debian's python3 needs python3-venv (ensurepip) for this
        log "python3 -m venv failed: installing python3-venv"
        rm -rf "$VENV"
        apt-get install -y -qq python3-venv >/dev/null || die "apt-get install python3-venv failed"
        python3 -m venv "$VENV" || die "python3 -m venv failed"
    fi
fi
stamp="$VENV/.avocado-installed"
want="$(printf '%s\n' "${PKGS[@]}")"
if [[ "$(cat "$stamp" 2>/dev/null)" == "$want" ]] && "$VENV/bin/python" -c \
    'import avocado, qemu.qmp, avocado_varianter_yaml_to_mux, avocado_result_html' 2>/dev/null; then
    log "avocado $AVOCADO_VERSION already installed in $VENV"
else
    log "pip install ${PKGS[*]}"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PKGS[@]}" \
        >"$CACHE/pip-avocado.log" 2>&1 || { cat "$CACHE/pip-avocado.log" >&2; die "pip install failed"; }
    printf '%s\n' "${PKGS[@]}" >"$stamp"
fi
echo "$VENV/bin/python"
