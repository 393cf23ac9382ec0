#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server`, the baseline tests/bench/engine.py compares the
# engine with, from the llama.cpp source vendored in the llama-cpp-python sdist the lock
# pins: the same llama.cpp revision as the engine, so the comparison is one of serving
# code, not of kernels. Only `make bench` runs it; `make test` never needs it and nothing
# of llama.cpp's code is committed.
#   scripts/build-llama-server.sh        builds it unless cached; prints the binary's path
#   scripts/build-llama-server.sh path   prints where the binary is (or would be), builds nothing
#
# The sdist is fetched by pip against the lock's hash (docs/security.md, "Supply chain").
# pip download still prepares the sdist's metadata (scikit-build-core runs, nothing
# compiles): with the hashed build tools of the .venv (--no-build-isolation, as in
# scripts/setup.sh) when they are there, in pip's isolated environment otherwise; the
# archive whose source is compiled here is hash-checked either way.
#
# The cache is var/bench/llama-server/<version>-<hash>/bin/llama-server (var/ is
# git-ignored). The hash covers the lock entry (version and sdist hash) and the cmake
# flags, so a new pin or a new flag builds afresh and an unchanged one costs nothing. The
# binary is moved into place only once it is built: an interrupted build leaves no
# half-built binary that a later run would take for a good one.
#
# The flags are scripts/setup.sh's CPU flags (a fixed x86-64 level, not "native"), and
# nothing that reaches the network: no TLS (LLAMA_OPENSSL; the vendored CMakeLists has
# dropped LLAMA_CURL and only warns about it), no web UI (neither the npm build nor the
# download of prebuilt assets), no tests or examples. Static: one self-contained binary.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

VENV=${VENV:-.venv}
JOBS=${JOBS:-$(nproc)}
CACHE=var/bench/llama-server
FLAGS=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF
       -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
       -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
       -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON)

log() { printf '[llama-server] %s\n' "$*" >&2; }

# llama-cpp-python's entry of the lock: its pin and the hash of its sdist.
entry=$(awk '/^llama-cpp-python==/ { on = 1 } on { print; if ($0 !~ /\\$/) exit }' \
  requirements/lock.txt)
[ -n "$entry" ] || { log "requirements/lock.txt has no llama-cpp-python entry"; exit 1; }
version=$(printf '%s\n' "$entry" | head -1 | sed -E 's/^llama-cpp-python==([^ ]+).*/\1/')
key=$(printf '%s\n' "$entry" "${FLAGS[@]}" | sha256sum | cut -c1-12)
dir=$CACHE/$version-$key
binary=$dir/bin/llama-server

if [ "${1:-build}" = path ]; then echo "$here/$binary"; exit 0; fi
[ "${1:-build}" = build ] || { echo "usage: $0 [build|path]" >&2; exit 2; }

if [ -x "$binary" ]; then
  log "cached: $binary"
  echo "$here/$binary"
  exit 0
fi

command -v cmake >/dev/null || { log "cmake is missing (scripts/setup.sh system)"; exit 1; }
[ -x "$VENV/bin/pip" ] || { log "$VENV is missing (make setup-python)"; exit 1; }

mkdir -p "$dir"
work=$(mktemp -d "$dir/work.XXXXXX")
trap 'rm -rf "$work"' EXIT
buildlog=$dir/build.log
log "building llama-server from llama-cpp-python $version, $JOBS jobs (about 10 minutes on 2 cores; log: $buildlog)"

printf '%s\n' "$entry" > "$work/requirement.txt"
isolation=()
"$VENV/bin/python" -c 'import scikit_build_core' 2>/dev/null && isolation=(--no-build-isolation)
"$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
  "${isolation[@]}" --require-hashes -r "$work/requirement.txt" -d "$work/sdist" \
  > "$buildlog" 2>&1 || { log "pip download failed:"; tail -20 "$buildlog" >&2; exit 1; }
tar -xzf "$work"/sdist/llama_cpp_python-"$version".tar.gz -C "$work"
src=$work/llama_cpp_python-$version/vendor/llama.cpp
[ -f "$src/tools/server/CMakeLists.txt" ] || { log "no llama-server source in the sdist"; exit 1; }

{ cmake -S "$src" -B "$work/build" "${FLAGS[@]}" \
    && cmake --build "$work/build" --target llama-server --parallel "$JOBS"; } \
  >> "$buildlog" 2>&1 || { log "build failed:"; tail -30 "$buildlog" >&2; exit 1; }

mkdir -p "$dir/bin"
mv "$work/build/bin/llama-server" "$binary.partial"
mv "$binary.partial" "$binary"
log "built: $binary"
echo "$here/$binary"
