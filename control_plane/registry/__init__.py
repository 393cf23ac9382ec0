"""The model registry: which GGUF file, by sha256, each model name is pinned to."""
