"""``POST /v1/embeddings`` in OpenAI's shape, for clients allowed to use it."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from data_plane.api.deps import LimitedClientDep, RetrievalDep
from data_plane.protocol import EmbeddingRequest

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/embeddings", response_model=None)
async def create_embeddings(
    body: EmbeddingRequest, client: LimitedClientDep, service: RetrievalDep
) -> JSONResponse:
    """Vectors of a string, a list of strings, or token arrays of the embedding model's
    tokenizer (normalised; cosine = dot product)."""
    vectors, tokens = await service.embed(client, body.model, body.inputs(), body.dimensions)
    data: list[dict[str, Any]] = []
    for i, vector in enumerate(vectors):
        embedding: str | list[float]
        if body.encoding_format == "base64":
            embedding = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        else:
            embedding = np.asarray(vector, dtype=np.float64).tolist()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        headers={"Cache-Control": "no-store"},
    )
