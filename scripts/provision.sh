#!/usr/bin/env bash
# Installs what kmflow needs on a fresh Debian machine, skipping what is already there:
#   - libclang-dev (apt): bindgen for the rocksdb crate;
#   - tansu 0.6.0 with the `dynostore` feature (cargo install): the Kafka-protocol broker the
#     tests run against. The feature provides its in-memory storage (`memory://`); a default
#     build has no storage engine and refuses to start.
#   - prometheus (apt) and a Python venv with schemathesis, sseclient-py and requests
#     (~/.cache/kmflow/venv, or $KMFLOW_VENV): the ecosystem tests' real clients;
#   - with --bench: wrk (the HTTP load tool) and PostgreSQL (the incumbent baseline of
#     benches/e2e.sh), from Debian packages.
# Usage: scripts/provision.sh [--no-tansu] [--tansu-background] [--bench]
#   --tansu-background  start the tansu build in the background and return at once; wait for
#                       it later with `scripts/provision.sh --wait-tansu`.
set -euo pipefail

TANSU_VERSION=0.6.0
STAMP_DIR="${HOME}/.cache/kmflow"
TANSU_LOG="${STAMP_DIR}/tansu-install.log"
mkdir -p "$STAMP_DIR"

TANSU_STAMP="${STAMP_DIR}/tansu-${TANSU_VERSION}-dynostore.installed"
have_tansu() {
  [ -f "$TANSU_STAMP" ] && { command -v tansu >/dev/null 2>&1 || [ -x "${HOME}/.cargo/bin/tansu" ]; }
}
install_tansu() {
  # A kept target dir makes a reinstall incremental.
  CARGO_TARGET_DIR="${STAMP_DIR}/tansu-target" cargo install tansu --version "$TANSU_VERSION" \
    --locked --features dynostore --force && touch "$TANSU_STAMP"
}

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then echo sudo; else
      echo "provision: need root (or sudo) to apt-get install $*" >&2; exit 1
    fi
  fi
}

install_apt() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local SUDO; SUDO=$(need_root "${missing[@]}")
  echo "provision: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
}

case "${1:-}" in
  --wait-tansu)
    if have_tansu; then exit 0; fi
    if [ -f "${STAMP_DIR}/tansu.pid" ]; then
      pid=$(cat "${STAMP_DIR}/tansu.pid")
      echo "provision: waiting for the tansu build (pid $pid, log $TANSU_LOG)"
      while kill -0 "$pid" 2>/dev/null; do sleep 5; done
    fi
    have_tansu || { echo "provision: tansu install failed; see $TANSU_LOG" >&2; tail -20 "$TANSU_LOG" >&2 || true; exit 1; }
    exit 0
    ;;
esac

install_apt libclang-dev
# The ecosystem tests' real clients: Prometheus and promtool, docker-compose (to validate the
# compose file; no Docker engine needed) from Debian; schemathesis and an SSE
# client (PyPI, into a venv of their own).
install_apt prometheus python3-venv docker-compose
VENV="${KMFLOW_VENV:-${STAMP_DIR}/venv}"
# Pinned: the versions the tests were written against (a new pin reinstalls).
PY_PACKAGES="schemathesis==4.32.5 sseclient-py==1.9.0 requests==2.34.2"
VENV_STAMP="${VENV}/.kmflow-$(echo "$PY_PACKAGES" | cksum | cut -d' ' -f1)"
if [ ! -f "$VENV_STAMP" ]; then
  echo "provision: pip install $PY_PACKAGES into $VENV"
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q $PY_PACKAGES
  touch "$VENV_STAMP"
fi
if [ "${1:-}" = "--bench" ]; then
  install_apt wrk postgresql
fi

if [ "${1:-}" != "--no-tansu" ] && ! have_tansu; then
  if [ "${1:-}" = "--tansu-background" ]; then
    echo "provision: building tansu ${TANSU_VERSION} in the background (about 20 min cold; log $TANSU_LOG)"
    ( install_tansu ) >"$TANSU_LOG" 2>&1 &
    echo $! >"${STAMP_DIR}/tansu.pid"
  else
    echo "provision: cargo install tansu ${TANSU_VERSION} --features dynostore (about 20 min cold)"
    install_tansu
  fi
fi
