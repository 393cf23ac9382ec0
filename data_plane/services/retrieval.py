"""Retrieval use cases on the client API: embeddings, session documents, context assembly.

Context assembly runs as one of the inference service's context assemblers: before a
chat turn's prompt is built it retrieves the best chunks from the knowledge bases the
request names (``"sanctum": {"knowledge_bases": [...], "top_k": K}``) and from the
session's own documents, and rewrites the last user message to carry them, within the
model's context (counted in the model's tokens, room kept for the answer). The session
transcript keeps the caller's messages; the response carries the sources.

Isolation: a knowledge base is searched only when it is the calling client's (its
collection is derived from the client's id) and the client's config lists it; any other
name gets 404, exactly as a missing one does.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_plane.engine.base import Engine
from data_plane.engine.chat_template import ChatTemplateError
from data_plane.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unavailable,
    Unprocessable,
)
from data_plane.protocol import ChatCompletionRequest
from data_plane.rag import Retrieval
from data_plane.rag.memory import EXTRAS_KEY, SessionDocuments
from data_plane.rag.parsing import DocumentRejected
from data_plane.rag.store import Hit
from data_plane.runtime import Runtime
from data_plane.sessions import Session
from shared.config import ClientSpec, Name

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]

# A chunk cut short to fit must still say something.
MIN_PARTIAL_TOKENS = 32

CONTEXT_TEMPLATE = (
    "Use the numbered sources below to answer the question that follows them. "
    "If they do not contain the answer, say so.\n\n"
    "{sources}\n\n"
    "Question: {question}"
)


class RetrievalOptions(BaseModel):
    """The ``sanctum`` object of a chat request (other keys belong to other features)."""

    model_config = ConfigDict(extra="ignore")

    knowledge_bases: Annotated[list[Name], Field(max_length=16)] = Field(default_factory=list)
    top_k: int | None = None


class RetrievalService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings.retrieval

    @property
    def retrieval(self) -> Retrieval:
        if self.runtime.retrieval is None:
            raise Unavailable("retrieval is not enabled on this node", code="retrieval_disabled")
        return self.runtime.retrieval

    # --- embeddings ----------------------------------------------------------------------

    @property
    def dimensions(self) -> int:
        return self.runtime.retrieval.embedder.dimensions if self.runtime.retrieval else 0

    def embedding_model(self, client: ClientSpec) -> str | None:
        """The embedding model's name if this client may use it."""
        if client.embeddings and self.runtime.retrieval is not None:
            return self.runtime.retrieval.embedder.name
        return None

    async def embed(
        self,
        client: ClientSpec,
        model: str,
        inputs: list[str] | list[list[int]],
        dimensions: int | None = None,
    ) -> tuple[Any, int]:
        """Vectors of ``inputs`` (texts, or token arrays of the embedder's tokenizer) for
        this client; returns them and the tokens they held."""
        if not client.embeddings:
            raise Forbidden(
                "this key may not use embeddings", param="model", code="embeddings_not_allowed"
            )
        embedder = self.retrieval.embedder
        if model != embedder.name:
            raise NotFound(
                f"no such embedding model; this node serves {embedder.name}",
                param="model",
                code="model_not_found",
            )
        if dimensions is not None and dimensions != embedder.dimensions:
            raise BadRequest(
                f"{embedder.name} makes {embedder.dimensions}-dimensional vectors only",
                param="dimensions",
            )
        if not inputs:
            raise BadRequest("input must not be empty", param="input")
        limit = self.settings.max_embedding_inputs
        if len(inputs) > limit:
            raise BadRequest(
                f"{len(inputs)} inputs; at most {limit} per request",
                param="input",
                code="too_many_inputs",
            )
        texts = [x for x in inputs if isinstance(x, str)]
        arrays = [x for x in inputs if isinstance(x, list)]
        if texts:
            chars = sum(len(text) for text in texts)
            if chars > self.runtime.settings.limits.max_prompt_chars:
                raise BadRequest(
                    f"input holds {chars} characters; at most "
                    f"{self.runtime.settings.limits.max_prompt_chars} in a request",
                    param="input",
                    code="request_too_large",
                )
            for i, text in enumerate(texts):
                if not text.strip():
                    raise BadRequest(f"input[{i}] is empty", param="input")
            counts = await embedder.count_tokens(texts, client=client.id)
        else:
            vocab = embedder.vocab_size
            for i, ids in enumerate(arrays):
                if not ids:
                    raise BadRequest(f"input[{i}] is empty", param="input")
                if any(not 0 <= t < vocab for t in ids):
                    # Which id is not said: a client's tokens are its content.
                    raise BadRequest(
                        f"input[{i}] holds a token id outside {embedder.name}'s vocabulary "
                        f"(0 to {vocab - 1}); token arrays must come from its own tokenizer",
                        param="input",
                    )
            counts = [len(ids) for ids in arrays]
        for i, n in enumerate(counts):
            if n > embedder.max_tokens:
                raise BadRequest(
                    f"input[{i}] is {n} tokens; {embedder.name} reads at most "
                    f"{embedder.max_tokens}",
                    param="input",
                    code="context_length_exceeded",
                )
        total, most = sum(counts), self.settings.max_embedding_tokens
        if total > most:
            raise BadRequest(
                f"inputs hold {total} tokens; at most {most} per request",
                param="input",
                code="request_too_large",
            )
        started = time.monotonic()
        if texts:
            vectors = await embedder.embed(texts, client=client.id, tokens=counts)
        else:
            vectors = await embedder.embed_tokens(arrays, client=client.id)
        logger.info(
            "embeddings client=%s inputs=%d tokens=%d seconds=%.3f",
            client.id,
            len(inputs),
            sum(counts),
            time.monotonic() - started,
        )
        return vectors, sum(counts)

    # --- session documents ---------------------------------------------------------------

    def documents_of(self, session: Session) -> SessionDocuments | None:
        docs = session.extras.get(EXTRAS_KEY)
        return docs if isinstance(docs, SessionDocuments) else None

    async def add_session_document(
        self,
        client: ClientSpec,
        session_id: str,
        name: str,
        *,
        text: str | None = None,
        content: bytes | None = None,
    ) -> dict[str, Any]:
        """Chunk and embed ``text``, or the text of file ``content``, into the session's
        RAM-only documents."""
        session = self.runtime.sessions.get(client.id, session_id)
        retrieval = self.retrieval
        limit = self.settings.max_session_document_bytes
        started = time.monotonic()
        if content is not None:
            most = self.settings.max_session_file_bytes
            if len(content) > most:
                raise PayloadTooLarge(
                    f"file is {len(content)} bytes; a session document's file may be at "
                    f"most {most}",
                    param="content",
                )
            self._check_room(session, name)
            try:
                text = await retrieval.parser.parse(
                    name,
                    content,
                    client=client.id,
                    timeout=self.settings.parse_timeout_seconds,
                    max_text_bytes=limit,
                )
            except DocumentRejected as exc:
                raise _refused(exc) from None
            param = "content"
        else:
            param = "text"
        assert text is not None
        if not text.strip():
            raise BadRequest(f"{param} is empty", param=param, code="empty_document")
        size = len(text.encode("utf-8"))
        if size > limit:
            raise PayloadTooLarge(
                f"document is {size} bytes; a session document may be at most {limit}",
                param=param,
            )
        self._check_room(session, name)
        chunks = await retrieval.embedder.run(retrieval.chunker.split, text, client=client.id)
        need = sum(len(c.text.encode("utf-8")) for c in chunks) + 2 * 4 * len(chunks) * (
            retrieval.embedder.dimensions
        )  # as document_size counts it
        self._check_memory(client, session, name, need)
        vectors = await retrieval.embedder.embed(
            [c.text for c in chunks], client=client.id, tokens=[c.tokens for c in chunks]
        )
        if session.closed:  # ended while its document was being embedded
            raise NotFound("no such session", param="session_id")
        self._check_room(session, name)
        self._check_memory(client, session, name, need)
        docs = self.documents_of(session)
        if docs is None:
            docs = SessionDocuments(session.id, retrieval.embedder.dimensions)
            session.extras[EXTRAS_KEY] = docs
        docs.put(name, chunks, vectors)
        session.last_used = time.monotonic()
        logger.info(
            "session document added session=%s chunks=%d documents=%d seconds=%.3f",
            session.id,
            len(chunks),
            len(docs),
            time.monotonic() - started,
        )
        return {
            "object": "session.document",
            "session_id": session.id,
            "name": name,
            "chunks": len(chunks),
            "tokens": sum(c.tokens for c in chunks),
            "documents": len(docs),
        }

    def _check_room(self, session: Session, name: str) -> None:
        docs = self.documents_of(session)
        limit = self.settings.max_session_documents
        if docs is not None and name not in docs and len(docs) >= limit:
            raise Conflict(f"session {session.id} holds {limit} documents, its limit", param="name")

    def _check_memory(self, client: ClientSpec, session: Session, name: str, need: int) -> None:
        """429 when the document would take the client's or the node's session documents
        past their RAM caps (a document it replaces is counted out)."""
        mine = everyone = 0
        for s in self.runtime.sessions.open_sessions():
            docs = self.documents_of(s)
            if docs is None:
                continue
            held = docs.size - (docs.size_of(name) if s is session else 0)
            everyone += held
            if s.client_id == client.id:
                mine += held
        for held, cap, whose in (
            (mine, self.settings.session_documents_client_bytes, "this client's"),
            # The node's cap lets a client with no documents yet have one, so a few
            # clients can't fill the node for everyone (at most one document more
            # per client, each under the client's cap).
            (everyone if mine else 0, self.settings.session_documents_node_bytes, "this node's"),
        ):
            if held + need > cap:
                raise TooManyRequests(
                    f"{whose} session documents hold {held} bytes of {cap}; this one needs "
                    f"{need}: end a session or remove documents",
                    code="session_memory_full",
                )

    def session_document_count(self) -> int:
        return sum(
            len(docs)
            for s in self.runtime.sessions.open_sessions()
            if (docs := self.documents_of(s)) is not None
        )

    # --- context assembly ----------------------------------------------------------------

    def options(self, req: ChatCompletionRequest) -> RetrievalOptions:
        try:
            options = RetrievalOptions.model_validate(req.sanctum or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            param = f"sanctum.{where}" if where else "sanctum"
            raise Unprocessable(f"{param}: {first.get('msg', 'invalid')}", param=param) from None
        top = self.settings.top_k_max
        if options.top_k is not None and not 1 <= options.top_k <= top:
            raise Unprocessable(f"top_k must be between 1 and {top}", param="sanctum.top_k")
        return options

    async def knowledge_bases(self, client: ClientSpec, names: list[str]) -> list[str]:
        """The named knowledge bases, each checked to be this client's (404 otherwise)."""
        store = self.retrieval.store
        checked: list[str] = []
        for name in dict.fromkeys(names):
            if name not in client.knowledge_bases or not await store.exists(client.id, name):
                raise NotFound(
                    "no such knowledge base",
                    param="sanctum.knowledge_bases",
                    code="knowledge_base_not_found",
                )
            checked.append(name)
        return checked

    async def retrieve(
        self, client: ClientSpec, session: Session, knowledge_bases: list[str], query: str, k: int
    ) -> list[Hit]:
        """The ``k`` best chunks for ``query`` over these knowledge bases and the session's
        documents."""
        retrieval = self.retrieval
        vector: np.ndarray = await retrieval.embedder.embed_query(query, client=client.id)
        hits: list[Hit] = []
        if knowledge_bases:
            hits += await retrieval.store.search(client.id, knowledge_bases, vector, k)
        docs = self.documents_of(session)
        if docs is not None:
            hits += docs.search(vector, k)
        hits.sort(key=lambda h: -h.score)
        return hits[:k]

    async def assemble(
        self,
        client: ClientSpec,
        session: Session,
        req: ChatCompletionRequest,
        messages: Messages,
        engine: Engine,
    ) -> tuple[Messages, dict[str, Any]]:
        """The context assembler registered on the inference service."""
        options = self.options(req)
        docs = self.documents_of(session)
        if not options.knowledge_bases and not docs:
            return messages, {}
        started = time.monotonic()
        kbs = await self.knowledge_bases(client, options.knowledge_bases)
        last = next(
            (i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "user"), None
        )
        if last is None or not messages[last]["content"].strip():
            return messages, {"sources": []}
        k = options.top_k or self.settings.top_k_default
        hits = await self.retrieve(client, session, kbs, messages[last]["content"], k)
        context_size = engine.info.context_size
        reserve = min(req.token_limit() or self.settings.answer_reserve_tokens, context_size // 2)
        try:
            # Tokenizing: on the prompt workers, like the prompt it goes into.
            assembled, used, context_tokens = await self.runtime.prompt_work.run(
                client.id,
                lambda: fit_context(
                    messages,
                    last,
                    hits,
                    engine,
                    reserve=reserve,
                    max_context_tokens=self.settings.max_context_tokens,
                ),
            )
        except ChatTemplateError:
            return messages, {"sources": []}  # the inference service answers 400 for it
        logger.info(
            "retrieval session=%s knowledge_bases=%d session_documents=%d hits=%d used=%d "
            "context_tokens=%d ms=%.1f",
            session.id,
            len(kbs),
            len(docs) if docs else 0,
            len(hits),
            len(used),
            context_tokens,
            (time.monotonic() - started) * 1000,
        )
        return assembled, {"sources": [dict(h.as_source(), truncated=cut) for h, cut in used]}


def fit_context(
    messages: Messages,
    last: int,
    hits: list[Hit],
    engine: Engine,
    *,
    reserve: int,
    max_context_tokens: int,
) -> tuple[Messages, list[tuple[Hit, bool]], int]:
    """Messages with as many hits as fit in message ``last``, best first.

    Never overflows: the budget is what the context holds minus the prompt without
    sources (template included) and the ``reserve`` kept for the answer, capped by
    ``max_context_tokens``; a chunk that does not fit whole is cut to fit (or left out
    when too little room is left), and the result is counted once more as a whole.
    Returns the messages, the hits used (and whether each was cut) and the tokens the
    sources take. With no room at all, the messages come back unchanged.
    """
    context_size = engine.info.context_size
    question = messages[last]["content"]

    def build(blocks: list[str]) -> Messages:
        content = CONTEXT_TEMPLATE.format(sources="\n\n".join(blocks), question=question)
        return [*messages[:last], {**messages[last], "content": content}, *messages[last + 1 :]]

    scaffold = len(engine.chat_tokens(build([])))
    budget = min(max_context_tokens, context_size - reserve - scaffold)
    blocks: list[str] = []
    used: list[tuple[Hit, bool]] = []
    costs: list[int] = []
    for hit in hits:
        spent = sum(costs)
        head = f"[{len(blocks) + 1}] {hit.document}\n"
        cost = len(engine.tokenize(head + hit.text + "\n\n", special=False))
        if spent + cost <= budget:
            blocks.append(head + hit.text)
            used.append((hit, False))
            costs.append(cost)
            continue
        room = budget - spent
        if room < MIN_PARTIAL_TOKENS:
            break
        text = hit.text
        while text:
            text = text[: int(len(text) * min(0.9, room / cost))].rstrip()
            cost = len(engine.tokenize(head + text + "\n\n", special=False))
            if text and cost <= room:
                blocks.append(head + text)
                used.append((hit, True))
                costs.append(cost)
                break
        break
    assembled = build(blocks)
    while blocks and len(engine.chat_tokens(assembled)) + reserve > context_size:
        blocks.pop()
        used.pop()
        costs.pop()
        assembled = build(blocks)
    if not blocks:
        return messages, [], 0
    return assembled, used, sum(costs)


def _refused(exc: DocumentRejected) -> ApiError:
    """The HTTP error for a session document's file that can't be used (the reason names
    the problem, never the file's content)."""
    reason = f"this file can't be used: {exc.reason}"
    if exc.kind == "unsupported":
        return BadRequest(reason, param="name", code="unsupported_file_type")
    if exc.kind == "empty":
        return BadRequest(reason, param="content", code="empty_document")
    if exc.kind == "too_large":
        return PayloadTooLarge(reason, param="content", code="document_too_large")
    if exc.kind == "too_slow":
        return Unprocessable(reason, param="content", code="document_too_slow")
    return Unprocessable(reason, param="content", code="unreadable_document")
