#!/usr/bin/env bash
# Prepare a fresh Debian / Ubuntu / Raspberry Pi OS machine for `make demo` and `make test`:
# system packages (mosquitto, Chromium, PostgreSQL server binaries, espeak-ng) and a virtual environment.
set -euo pipefail

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
APT_PACKAGES=(mosquitto mosquitto-clients chromium postgresql fonts-noto-core espeak-ng)

missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto mosquitto-clients)
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
ls /usr/share/fonts/truetype/noto/NotoSans-Regular.ttf >/dev/null 2>&1 || missing+=(fonts-noto-core)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)  # kiosk spoken guidance (Vietnamese voice)

if [ ${#missing[@]} -gt 0 ]; then
  echo "cityedge setup: installing system packages: ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="none"; fi
  if [ "$SUDO" = "none" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "cityedge setup: cannot install ${missing[*]} here (no apt-get or no root)." >&2
    echo "  Install them with your package manager, e.g.:" >&2
    echo "    sudo apt-get install -y ${APT_PACKAGES[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  # The Debian package starts a system broker on :1883; cityedge starts its own, so leave it be.
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[dev]'
echo "cityedge setup: ready ($VENV)"
