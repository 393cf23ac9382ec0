#!/usr/bin/env bash
# Sanctum on a GPU: does this machine's NVIDIA GPU serve the model as the CPU does?
#
#   scripts/gpu-check.sh
#
# In order, stopping at the first step that fails:
#   1. a GPU is visible: /dev/nvidia0..N, and nvidia-smi answers when it is installed;
#   2. this llama.cpp was built with GPU offload (SANCTUM_LLAMA_BACKEND=cuda
#      scripts/setup.sh python builds it so);
#   3. the bundled model loads through Sanctum's engine with every layer offloaded
#      (a pin's gpu_layers=-1) and answers a greedy prompt;
#   4. the determinism and isolation tests run with every layer offloaded
#      (SANCTUM_DP_ENGINE__N_GPU_LAYERS=-1, which the engine tests and the nodes they
#      start read): greedy output the same alone and beside seven other sessions, no
#      session seeing another's turns, teardown leaving no KV cell behind;
#   5. the engine benchmark, one round (SANCTUM_BENCH_ROUNDS=1), written to
#      var/gpu-check/benchmarks.md: the numbers in docs/benchmarks.md stay the CPU's.
#
# Exit status: 0 when all passed; 1 when a step failed, or no GPU was found (it says
# "no GPU found" and runs nothing else). The Python is .venv's unless PYTHON names one.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
PY=${PYTHON:-$here/.venv/bin/python}
DEV=${SANCTUM_GPU_CHECK_DEV:-/dev}  # where device nodes are (a test points it elsewhere)
OUT=var/gpu-check

say() { printf 'gpu-check: %s\n' "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

# --- 1. the GPU --------------------------------------------------------------------------
gpus=()
for node in "$DEV"/nvidia[0-9]*; do
  [[ -e $node && ${node##*/nvidia} =~ ^[0-9]+$ ]] && gpus+=("$node")
done
if [ ${#gpus[@]} -eq 0 ]; then
  say "no GPU found (no $DEV/nvidia0..N): nothing to check on this machine"
  exit 1
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi -L >&2 || fail "nvidia-smi does not answer: the NVIDIA driver is not working"
else
  say "${gpus[*]} present; nvidia-smi is not installed (VRAM not shown)"
fi

# --- 2. llama.cpp with offload -------------------------------------------------------------
[ -x "$PY" ] || fail "no Python at $PY: run scripts/setup.sh python (or set PYTHON)"
"$PY" -c 'import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)' \
  || fail "this llama.cpp has no GPU offload: SANCTUM_LLAMA_BACKEND=cuda scripts/setup.sh python"
say "llama.cpp is built with GPU offload"

export PYTHONPATH="$here" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export SANCTUM_DP_ENGINE__N_GPU_LAYERS=-1

# --- 3. the model, every layer offloaded -----------------------------------------------------
"$PY" - <<'PY' || fail "the model did not load or answer with every layer on the GPU"
import asyncio

from data_plane.engine.base import Generation, SamplingParams
from data_plane.engine.llama import LlamaEngine
from data_plane.runtime import engine_config
from data_plane.settings import Settings
from tests.conftest import bundled_model_spec

spec = bundled_model_spec().model_copy(update={"gpu_layers": -1})
config = engine_config(spec, Settings())
assert config.n_gpu_layers == -1


async def main() -> int:
    engine = LlamaEngine(config)
    try:
        seq = await engine.open_sequence()
        prompt = engine.chat_tokens([{"role": "user", "content": "Name three colours."}])
        result = Generation()
        stream = await engine.generate(
            seq, prompt, SamplingParams(max_tokens=16, temperature=0.0), result
        )
        async for _ in stream:
            pass
        await engine.close_sequence(seq)
        return result.completion_tokens
    finally:
        await engine.aclose()


tokens = asyncio.run(main())
assert tokens > 0, "no token generated"
print(f"gpu-check: model loaded with every layer on the GPU; {tokens} tokens generated")
PY

# --- 4. determinism and isolation, on the GPU ------------------------------------------------
"$PY" -m pytest -q -p no:cacheprovider \
  "tests/data_plane/test_engine_scheduler.py::test_greedy_output_is_the_same_alone_and_beside_seven_others" \
  "tests/data_plane/test_engine_scheduler.py::test_a_session_cannot_see_another_sessions_turns" \
  "tests/data_plane/test_engine_scheduler.py::test_teardown_removes_every_cell_of_the_session" \
  "tests/data_plane/test_engine_scheduler.py::test_identical_prompts_are_each_evaluated_in_their_own_cells" \
  "tests/data_plane/test_sessions.py::test_one_client_cannot_see_anothers_conversation" \
  || fail "determinism or isolation does not hold with every layer on the GPU"

# --- 5. a short benchmark ------------------------------------------------------------------
mkdir -p "$OUT"
SANCTUM_BENCH_ROUNDS=1 SANCTUM_BENCH_RESULTS="$OUT/benchmarks.md" "$PY" -m tests.bench engine \
  || fail "the engine benchmark did not complete"
say "all passed; benchmark results in $OUT/benchmarks.md"
