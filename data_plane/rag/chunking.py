"""Token-aware chunking with overlap, counted in the embedder's own tokens.

A chunk holds at most ``chunk_tokens`` tokens, so the embedder reads all of it (it
truncates silently past its limit). Cuts fall on the best boundary in the second half
of the window (before a Markdown heading, then a blank line, a line break, a sentence
end, a space), and
the next chunk starts up to ``overlap_tokens`` earlier, on a sentence or word boundary,
so a fact that straddles a cut is whole in one of the two chunks. Chunk texts are
slices of the document's text, never re-assembled from tokens (the tokenizer lowercases
and strips accents; the sources shown to a client must read as written).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

# Long documents are tokenized a block at a time (cut at paragraph breaks), which keeps
# the tokenizer's offset lists small; a block edge is a chunk edge.
BLOCK_CHARS = 20_000


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    tokens: int


def normalize(text: str) -> str:
    """Line endings unified, NULs dropped, outer whitespace trimmed."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").strip()


def _blocks(text: str) -> list[str]:
    blocks: list[str] = []
    start = 0
    while len(text) - start > BLOCK_CHARS:
        window = text[start : start + BLOCK_CHARS]
        cut = -1
        for sep in ("\n\n", "\n", ". ", " "):
            cut = window.rfind(sep, BLOCK_CHARS // 2)
            if cut >= 0:
                cut += len(sep)
                break
        if cut < 0:
            cut = BLOCK_CHARS
        blocks.append(window[:cut])
        start += cut
    blocks.append(text[start:])
    return blocks


class Chunker:
    """Splits a document's text into chunks (see the module's docstring)."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        chunk_tokens: int,
        overlap_tokens: int,
        tokenizer_name: str = "",
    ) -> None:
        if not 0 <= overlap_tokens < chunk_tokens // 2:
            raise ValueError("overlap_tokens must be less than half of chunk_tokens")
        self._tokenizer = tokenizer
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens
        self.tokenizer_name = tokenizer_name

    @property
    def signature(self) -> str:
        """Names the chunking: a document chunked under another signature is re-chunked."""
        spec = f"v1;{self.tokenizer_name};{self.chunk_tokens};{self.overlap_tokens}"
        return hashlib.sha256(spec.encode()).hexdigest()[:16]

    def split(self, text: str) -> list[Chunk]:
        """The chunks of ``text``, in order (none for a text without any token)."""
        text = normalize(text)
        pieces: list[tuple[str, int]] = []
        for block in _blocks(text) if text else []:
            encoded = self._tokenizer(
                block, add_special_tokens=False, return_offsets_mapping=True, verbose=False
            )
            pieces += self._windows(block, [tuple(o) for o in encoded["offset_mapping"]])
        return [Chunk(index=i, text=t, tokens=n) for i, (t, n) in enumerate(pieces)]

    def _windows(self, text: str, offsets: list[tuple[int, int]]) -> list[tuple[str, int]]:
        n = len(offsets)
        size, overlap = self.chunk_tokens, self.overlap_tokens

        def score(j: int) -> int:
            """How good a cut between token j-1 and token j is (higher is better)."""
            end, start = offsets[j - 1][1], offsets[j][0]
            gap = text[end:start]
            if "\n" in gap and text[start] == "#":
                return 5  # before a Markdown heading: the heading opens the next chunk
            if gap.count("\n") >= 2:
                return 4
            if "\n" in gap:
                return 3
            if gap and end > 0 and text[end - 1] in ".!?;:":
                return 2
            return 1 if gap else 0

        out: list[tuple[str, int]] = []
        i = 0
        while i < n:
            hard = min(i + size, n)
            if hard == n:
                cut = n
            else:
                lo = i + max(1, size // 2)
                cut = max(range(lo, hard + 1), key=lambda j: (score(j), j))
            chunk = text[offsets[i][0] : offsets[cut - 1][1]].strip()
            if chunk:
                out.append((chunk, cut - i))
            if cut == n:
                break
            nxt = cut
            if overlap:
                candidates = range(max(i + 1, cut - overlap), cut)
                best = max(candidates, key=lambda j: (min(score(j), 2), -j), default=cut)
                if best < cut and score(best) > 0:
                    nxt = best
            i = nxt
        return out
