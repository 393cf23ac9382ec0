"""A session's documents: chunks and their vectors in RAM, for that session alone.

Held in the session's ``extras``; :meth:`SessionDocuments.close` (called when the
session ends, whatever ends it) drops every chunk and vector. Nothing here touches a
file. A session holds few documents, so an exact dot product over a NumPy matrix is
both the simplest and the fastest index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_plane.rag.chunking import Chunk
from data_plane.rag.store import Hit, chunk_id, document_id

EXTRAS_KEY = "retrieval.documents"


@dataclass
class _Document:
    name: str
    id: str
    chunks: list[Chunk]
    vectors: np.ndarray
    size: int = 0


def document_size(chunks: list[Chunk], vectors: np.ndarray) -> int:
    """Chunk texts and vectors, the vectors twice: the search matrix holds a copy."""
    return sum(len(c.text.encode("utf-8")) for c in chunks) + 2 * int(vectors.nbytes)


class SessionDocuments:
    """The documents of one session (see the module's docstring)."""

    def __init__(self, session_id: str, dimensions: int) -> None:
        self.session_id = session_id
        self.dimensions = dimensions
        self._documents: dict[str, _Document] = {}
        self._matrix: np.ndarray | None = None
        self._rows: list[tuple[_Document, Chunk]] = []
        self.closed = False

    def __len__(self) -> int:
        return len(self._documents)

    @property
    def chunk_count(self) -> int:
        return len(self._rows)

    @property
    def size(self) -> int:
        """Bytes held: chunk texts (UTF-8) and vectors, what the RAM caps count."""
        return sum(d.size for d in self._documents.values())

    def size_of(self, name: str) -> int:
        doc = self._documents.get(name)
        return doc.size if doc else 0

    def __contains__(self, name: object) -> bool:
        return name in self._documents

    def put(self, name: str, chunks: list[Chunk], vectors: np.ndarray) -> None:
        """Add document ``name``, replacing one of the same name."""
        if self.closed:
            raise RuntimeError("session documents are closed")
        doc_id = document_id(self.session_id, "", name)
        self._documents[name] = _Document(
            name, doc_id, list(chunks), vectors, document_size(chunks, vectors)
        )
        self._rebuild()

    def _rebuild(self) -> None:
        self._rows = [(d, c) for d in self._documents.values() for c in d.chunks]
        if self._rows:
            self._matrix = np.vstack([d.vectors for d in self._documents.values()])
        else:
            self._matrix = None

    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        if self._matrix is None or k <= 0:
            return []
        scores = self._matrix @ np.asarray(vector, dtype=np.float32)
        top = np.argsort(-scores)[:k]
        return [
            Hit(
                source="session",
                source_name=self.session_id,
                document=self._rows[i][0].name,
                chunk=self._rows[i][1].index,
                chunk_id=chunk_id(self._rows[i][0].id, self._rows[i][1].index),
                score=float(scores[i]),
                text=self._rows[i][1].text,
            )
            for i in top
        ]

    def close(self) -> None:
        """Drop every chunk and vector (the session ended)."""
        self.closed = True
        for doc in self._documents.values():
            doc.chunks.clear()
            doc.vectors = np.zeros((0, self.dimensions), dtype=np.float32)
        self._documents.clear()
        self._rows = []
        self._matrix = None
