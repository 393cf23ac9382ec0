"""Sessions: a client's conversation scope, held in RAM only.

A session owns its KV sequence, its transcript and its counters. It belongs to one client
(another client's key gets 404, as if it did not exist), ends when torn down, when idle
past its ttl, or, for a call without a session header, when that call ends. Ending it
clears its KV cells and drops everything it held; what is left is a usage summary of
ids and counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel

from data_plane.engine.base import Engine, Sequence
from data_plane.errors import Conflict, NotFound, TooManyRequests, Unauthorized
from shared.config import ModelSpec
from shared.routing import new_session_id
from shared.usage import MAX_TURN_TIMES, Commitment

logger = logging.getLogger(__name__)

EndedBy = Literal["teardown", "expiry", "one_shot", "shutdown"]


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str


class UsageSummary(BaseModel):
    """What is left of a session when it ends: ids and counts, never content."""

    session_id: str
    client_id: str
    model: ModelRef
    requests: int
    prompt_tokens: int
    completion_tokens: int
    first_token_ms: list[int] = []  # the turns' times to first token, in turn order
    commitments: list[Commitment] = []  # keyed hashes (shared.commitment), in turn order
    started_at: datetime
    ended_at: datetime
    ended_by: EndedBy


@dataclass(eq=False)
class Session:
    id: str
    client_id: str
    model: ModelSpec
    engine: Engine
    seq: Sequence
    ttl_seconds: float
    one_shot: bool
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_used: float = field(default_factory=time.monotonic)
    transcript: list[dict[str, str]] = field(default_factory=list)
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Each turn's time to first token in whole milliseconds, in turn order, for the
    # first MAX_TURN_TIMES turns that gave any text (a duration, never content).
    first_token_ms: list[int] = field(default_factory=list)
    # The content commitments of the turns whose client sent a nonce, for the first
    # MAX_TURN_TIMES of them: keyed hashes, meaningless without the client's nonce.
    commitments: list[Commitment] = field(default_factory=list)
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False
    # Per-session extras owned by other components (retrieval's documents, say), each
    # dropped at teardown through its own close hook.
    extras: dict[str, Any] = field(default_factory=dict)

    def first_token(self, seconds: float) -> None:
        """Note one turn's time to first token (past the first MAX_TURN_TIMES: dropped)."""
        if len(self.first_token_ms) < MAX_TURN_TIMES:
            self.first_token_ms.append(max(0, round(seconds * 1000)))

    def commit(self, commitment: Commitment) -> None:
        """Keep one turn's content commitment (past the first MAX_TURN_TIMES: dropped)."""
        if len(self.commitments) < MAX_TURN_TIMES:
            self.commitments.append(commitment)

    def expired(self, now: float) -> bool:
        return not self.busy.locked() and now - self.last_used > self.ttl_seconds

    def summary(self, ended_by: EndedBy) -> UsageSummary:
        return UsageSummary(
            session_id=self.id,
            client_id=self.client_id,
            model=ModelRef(
                name=self.model.name, version=self.model.version, sha256=self.model.sha256
            ),
            requests=self.requests,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            first_token_ms=list(self.first_token_ms),
            commitments=list(self.commitments),
            started_at=self.started_at,
            ended_at=datetime.now(UTC),
            ended_by=ended_by,
        )


# Called when a session ends, before its teardown is answered; may add to the answer.
EndHook = Callable[[Session, UsageSummary], Awaitable[dict[str, Any] | None]]


class SessionStore:
    """Every open session of this node, by id."""

    def __init__(self, node: str, max_open: int = 1024) -> None:
        self.node = node
        self.max_open = max_open
        # Whether a client may open a session now (the runtime's config decides; a
        # request authenticated just before its client's placement ended is refused).
        self.admits: Callable[[str], bool] = lambda client_id: True
        self._sessions: dict[str, Session] = {}
        self._end_hooks: list[EndHook] = []
        self._lock = asyncio.Lock()

    def add_end_hook(self, hook: EndHook) -> None:
        self._end_hooks.append(hook)

    def __len__(self) -> int:
        return len(self._sessions)

    def count(self, client_id: str) -> int:
        return sum(1 for s in self._sessions.values() if s.client_id == client_id)

    async def open(
        self,
        *,
        client_id: str,
        model: ModelSpec,
        engine: Engine,
        ttl_seconds: float,
        max_sessions: int,
        one_shot: bool = False,
    ) -> Session:
        async with self._lock:
            if not self.admits(client_id):
                raise Unauthorized("invalid, expired or revoked API key")
            if self.count(client_id) >= max_sessions:
                raise TooManyRequests(
                    f"client has {max_sessions} open sessions, its limit; "
                    "tear one down or wait for one to expire"
                )
            # A full node still opens a client's first session, so a few clients can't
            # shut out the rest (at most one session more per client).
            if len(self._sessions) >= self.max_open and self.count(client_id):
                raise TooManyRequests(
                    f"this node holds {self.max_open} open sessions, its limit; retry later",
                    code="node_sessions_full",
                    retry_after=5,
                )
            seq = await engine.open_sequence(client_id)
            session = Session(
                id=new_session_id(self.node),
                client_id=client_id,
                model=model,
                engine=engine,
                seq=seq,
                ttl_seconds=ttl_seconds,
                one_shot=one_shot,
            )
            self._sessions[session.id] = session
        logger.info(
            "session opened session=%s client=%s model=%s one_shot=%s",
            session.id,
            client_id,
            model.name,
            one_shot,
        )
        return session

    def get(self, client_id: str, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None or session.client_id != client_id:
            raise NotFound("no such session", param="session_id")
        return session

    async def end(self, session: Session, ended_by: EndedBy) -> tuple[UsageSummary, dict[str, Any]]:
        """Tear a session down: KV cells cleared, transcript and extras dropped.

        Returns its usage summary and whatever the end hooks added (a signed record).
        """
        if session.closed:
            raise NotFound(f"no session {session.id}", param="session_id")
        session.closed = True
        self._sessions.pop(session.id, None)
        try:
            await session.engine.close_sequence(session.seq)
        finally:
            session.transcript.clear()
            for value in session.extras.values():
                close = getattr(value, "close", None)
                if close is not None:
                    result = close()
                    if asyncio.iscoroutine(result):
                        await result
            session.extras.clear()
        summary = session.summary(ended_by)
        extra: dict[str, Any] = {}
        for hook in self._end_hooks:
            extra.update(await hook(session, summary) or {})
        logger.info(
            "session ended session=%s client=%s by=%s requests=%d prompt_tokens=%d "
            "completion_tokens=%d",
            session.id,
            session.client_id,
            ended_by,
            summary.requests,
            summary.prompt_tokens,
            summary.completion_tokens,
        )
        return summary, extra

    async def teardown(
        self, client_id: str, session_id: str
    ) -> tuple[UsageSummary, dict[str, Any]]:
        session = self.get(client_id, session_id)
        if session.busy.locked():
            raise Conflict(f"session {session_id} is answering a request", param="session_id")
        return await self.end(session, "teardown")

    async def expire_idle(self) -> int:
        expired = [s for s in list(self._sessions.values()) if s.expired(time.monotonic())]
        # Ending one awaits; a session that started a turn meanwhile is not idle any more.
        return await self.end_all("expiry", expired, still=lambda s: s.expired(time.monotonic()))

    async def end_all(
        self,
        ended_by: EndedBy = "shutdown",
        sessions: list[Session] | None = None,
        still: Callable[[Session], bool] | None = None,
    ) -> int:
        """End these sessions (default: every open one) with no caller to answer; those
        that ``still`` turns down when their turn comes are left open. Returns how many
        ended.

        One that fails to end cleanly (its record can't be stored, say) is logged and
        the others still end.
        """
        ended = 0
        for session in list(self._sessions.values()) if sessions is None else sessions:
            if session.closed or (still is not None and not still(session)):
                continue
            ended += 1
            try:
                await self.end(session, ended_by)
            except Exception:
                logger.exception("session end failed session=%s by=%s", session.id, ended_by)
        return ended

    def open_sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def by_engine(self, engine: Engine) -> list[Session]:
        return [s for s in self._sessions.values() if s.engine is engine]
