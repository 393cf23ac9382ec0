"""Usage records: signed when a session ends, stored before the end is answered.

The session store calls :meth:`UsageRecorder.on_session_end` for every session that ends
(teardown, expiry, a one-shot call, shutdown or an unpinned model). It turns the
session's usage summary into the shared :class:`~shared.usage.UsageRecord` (ids, model,
times, counts, the turns' times to first token, the content commitments a client asked
for: never content), signs it with the node's
key, and returns only once the outbox holds it durably; the teardown answer (or a one-shot
call's ``sanctum`` field) carries the same signed record as the client's copy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from data_plane.errors import NotFound, Unavailable
from data_plane.outbox import OutboxError, OutboxRecord, RecordMeta, UsageOutbox
from data_plane.sessions import Session, UsageSummary
from shared.usage import (
    UsageRecord,
    format_timestamp,
    new_record_id,
    parse_timestamp,
    sign_usage_record,
)

logger = logging.getLogger(__name__)


def usage_record(
    summary: UsageSummary, node_id: str, software: Mapping[str, Any] | None = None
) -> UsageRecord:
    """The contract's record of an ended session (a fresh record id each call).

    ``software``: the node's ``config_version``, ``release_digest`` and
    ``statement_index`` when the session ended (``Attestor.record_fields``).
    """
    return UsageRecord(
        record_id=new_record_id(),
        session_id=summary.session_id,
        client_id=summary.client_id,
        node_id=node_id,
        model=summary.model.name,
        model_version=summary.model.version,
        model_sha256=summary.model.sha256,
        started_at=format_timestamp(summary.started_at),
        ended_at=format_timestamp(summary.ended_at),
        ended_by=summary.ended_by,
        request_count=summary.requests,
        prompt_tokens=summary.prompt_tokens,
        completion_tokens=summary.completion_tokens,
        first_token_ms=tuple(summary.first_token_ms) or None,
        commitments=tuple(summary.commitments) or None,
        **(software or {}),
    )


class UsageRecorder:
    """Makes, signs and stores usage records; finds a client's record again."""

    def __init__(
        self,
        node_id: str,
        key: Ed25519PrivateKey,
        outbox: UsageOutbox,
        software: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.node_id = node_id
        self._key = key
        self.outbox = outbox
        self._software = software

    async def on_session_end(self, session: Session, summary: UsageSummary) -> dict[str, Any]:
        """The session store's end hook: returns ``{"usage_record": JWS}`` once durable."""
        if session.one_shot and summary.requests == 0:
            # A call refused before it ran: its one-shot session served nothing, and the
            # caller got an error, not a session id to hold a record for.
            return {}
        software = self._software() if self._software is not None else None
        record = usage_record(summary, self.node_id, software)
        token = sign_usage_record(record, self._key)
        meta = RecordMeta(
            record_id=record.record_id,
            session_id=record.session_id,
            client_id=record.client_id,
            ended_at=parse_timestamp(record.ended_at).timestamp(),
        )
        try:
            cursor = await self.outbox.append(token, meta)
        except OutboxError:
            logger.error(
                "usage record not stored session=%s record=%s", record.session_id, record.record_id
            )
            raise Unavailable(
                f"session {record.session_id} has ended, but its usage record could not be "
                "stored; the operator has been told",
                code="usage_record_unavailable",
            ) from None
        logger.info(
            "usage record stored session=%s record=%s cursor=%d",
            record.session_id,
            record.record_id,
            cursor,
        )
        return {"usage_record": token}

    async def receipt(self, client_id: str, session_id: str) -> OutboxRecord:
        """The signed record of one of the client's ended sessions (404 otherwise)."""
        found = await self.outbox.receipt(session_id)
        if found is None or found.meta.client_id != client_id:
            raise NotFound("no usage record for that session", param="session_id")
        return found
