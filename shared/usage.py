"""The usage record: what a data-plane node signs when a session ends. Never any content.

A record says who used which pinned model, when, for how many requests and tokens. The
node signs it with its own Ed25519 key (``shared.envelope``, typ
``sanctum-usage-record+jws``) the moment the session ends, keeps it in its outbox, and
hands the same compact JWS to the client (the held copy). The control plane verifies it
against the key it registered for that node, logs it, and auditors check it offline.

Every field is a string or an integer (or a list of integers) so the canonical JSON (and
so the signature and the ledger's leaf hash) is the same in every language: times are
RFC 3339 UTC strings (``2025-01-31T12:00:00.250Z``), counts are integers no larger than
2**53 - 1 (what a JSON number holds exactly everywhere).

Optional fields came later and are left out of the signed JSON when they hold nothing, so
a record signed before they existed still parses, re-encodes to the same bytes and keeps
its leaf hash:

- ``first_token_ms``: each turn's time to first token in whole milliseconds (the
  session's first ``MAX_TURN_TIMES`` turns);
- ``config_version``: the signed config the node had applied when the session ended;
- ``release_digest``: the node's software release (``shared.software``), the digest of
  its release manifest;
- ``statement_index``: the ledger index of the node statement (``shared.attestation``)
  that was current when the session ended, once the control plane had logged it;
- ``commitments``: per turn that carried a client's commitment nonce, keyed hashes of
  the canonical request and of the answer (``shared.commitment``): they say nothing to
  anyone without the client's nonce.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from shared import envelope
from shared.canonical import CanonicalEncodingError, b64urldecode_canonical, canonical_json
from shared.config import ModelVersion, Name, Sha256Hex

MAX_COUNT = 2**53 - 1
MAX_TURN_TIMES = 256
"""A record holds the times to first token of at most this many turns (the first ones)."""
OPTIONAL_FIELDS = (
    "first_token_ms",
    "config_version",
    "release_digest",
    "statement_index",
    "commitments",
)
"""Fields added after the first records were signed: omitted from the JSON when empty."""
ENDED_BY = ("teardown", "expiry", "one_shot", "shutdown")
"""How a session ended: the client tore it down, it sat idle past its ttl, it was the
one-shot session of a call without a session, or the node ended it because it was
shutting down or the session's model was unpinned."""

_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class UsageRecordError(ValueError):
    """A signed usage record is malformed, from an unknown node, or does not verify."""


def format_timestamp(moment: datetime) -> str:
    """The contract's spelling of a moment: UTC, millisecond precision, ``Z`` suffix."""
    if moment.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 UTC timestamp as the contract spells it (``...Z``)."""
    if not isinstance(text, str) or not _TIMESTAMP.fullmatch(text):
        raise ValueError("timestamp must be RFC 3339 UTC, like 2025-01-31T12:00:00.250Z")
    try:
        return datetime.fromisoformat(text[:-1] + "+00:00")
    except ValueError:
        raise ValueError("timestamp is not a real date and time") from None


def _timestamp(value: Any) -> str:
    if isinstance(value, datetime):
        return format_timestamp(value)
    parse_timestamp(value)
    return str(value)


Timestamp = Annotated[str, BeforeValidator(_timestamp)]
"""An RFC 3339 UTC timestamp string; a timezone-aware ``datetime`` is converted."""

Count = Annotated[int, Field(ge=0, le=MAX_COUNT, strict=True)]
Millis = Annotated[int, Field(ge=0, le=MAX_COUNT, strict=True)]


def new_record_id() -> str:
    """A fresh record id (a random UUID, in its canonical lowercase form)."""
    return str(uuid.uuid4())


class Commitment(BaseModel):
    """One turn's content commitment: HMAC-SHA256 under the client's nonce (hex).

    ``turn`` counts the session's requests from 0; ``request`` and ``answer`` are keyed
    hashes of the canonical JSON of what was asked and answered (``shared.commitment``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    turn: Count
    request: Sha256Hex
    answer: Sha256Hex


class UsageRecord(BaseModel):
    """One ended session: identifiers, the pinned model, times and counts. No content.

    Pass times as :func:`format_timestamp` strings (a timezone-aware ``datetime`` is
    converted too, but type checkers see the field as ``str``). A string is kept exactly
    as given, so a record signed elsewhere re-encodes to the same bytes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    record_id: str = Field(description="random UUID (version 4), canonical lowercase form")
    session_id: Name
    client_id: Name
    node_id: Name
    model: Name
    model_version: ModelVersion
    model_sha256: Sha256Hex
    started_at: Timestamp
    ended_at: Timestamp
    ended_by: Literal["teardown", "expiry", "one_shot", "shutdown"]
    request_count: Count
    prompt_tokens: Count
    completion_tokens: Count
    first_token_ms: tuple[Millis, ...] | None = Field(
        default=None,
        max_length=MAX_TURN_TIMES,
        description="each turn's time to first token in milliseconds, in turn order (the "
        f"first {MAX_TURN_TIMES} turns); absent from the signed JSON when no turn was timed",
    )

    config_version: Annotated[int, Field(ge=1, le=MAX_COUNT, strict=True)] | None = Field(
        default=None, description="the node's applied config version when the session ended"
    )
    release_digest: Sha256Hex | None = Field(
        default=None, description="the node's software release digest (shared.software)"
    )
    statement_index: Annotated[int, Field(ge=0, le=MAX_COUNT, strict=True)] | None = Field(
        default=None,
        description="ledger index of the node statement current when the session ended",
    )
    commitments: tuple[Commitment, ...] | None = Field(
        default=None,
        max_length=MAX_TURN_TIMES,
        description="content commitments of the turns that carried a client nonce "
        f"(the first {MAX_TURN_TIMES})",
    )

    @field_validator("first_token_ms", "commitments", mode="before")
    @classmethod
    def _turn_times(cls, value: Any) -> Any:
        # JSON has arrays, not tuples: a list is read as the tuple it stands for (strict
        # validation would refuse it). An empty one is no times at all, so a record has
        # one JSON form whether a caller passes () or None.
        if isinstance(value, list):
            value = tuple(value)
        return value or None

    @field_validator("record_id")
    @classmethod
    def _uuid4(cls, value: str) -> str:
        try:
            parsed = uuid.UUID(value)
        except (ValueError, TypeError, AttributeError):
            raise ValueError("record_id must be a UUID") from None
        if parsed.version != 4 or str(parsed) != value:
            raise ValueError("record_id must be a random (version 4) UUID in lowercase form")
        return value

    @model_validator(mode="after")
    def _ends_after_start(self) -> UsageRecord:
        if parse_timestamp(self.ended_at) < parse_timestamp(self.started_at):
            raise ValueError("ended_at is before started_at")
        return self

    def document(self) -> dict[str, Any]:
        """The record as the JSON object that gets signed (optional fields only if set)."""
        document = self.model_dump(mode="json")
        for name in OPTIONAL_FIELDS:
            if document.get(name) is None:
                del document[name]
        return document


def sign_usage_record(record: UsageRecord, key: Ed25519PrivateKey) -> str:
    """The node's compact JWS over the record (what the outbox keeps and the client holds)."""
    return envelope.sign(record.document(), key, envelope.TYP_USAGE_RECORD)


def check_compact_jws(token: str, what: str = "envelope") -> None:
    """Refuse a compact JWS unless each of its three parts is canonical base64url.

    The signature part is not covered by the signature itself, and lax base64url
    decoding ignores the unused low bits of its last character; a file that hashes or
    compares the token would then accept a changed byte.
    """
    if not isinstance(token, str) or not _COMPACT_JWS.fullmatch(token):
        raise UsageRecordError(f"{what} is not a compact JWS")
    for part, name in zip(token.split("."), ("header", "payload", "signature"), strict=True):
        try:
            b64urldecode_canonical(part, what=f"{what} {name}")
        except CanonicalEncodingError as exc:
            raise UsageRecordError(str(exc)) from None


def peek_usage_record(token: str) -> dict[str, Any]:
    """The record's JSON object, UNVERIFIED: only to find which node's key to check with."""
    check_compact_jws(token, "usage record")
    payload = b64urldecode_canonical(token.split(".")[1])
    try:
        document = json.loads(payload)
    except ValueError:
        raise UsageRecordError("usage record payload is not JSON") from None
    if not isinstance(document, dict):
        raise UsageRecordError("usage record payload is not a JSON object")
    return document


NodeKeys = Mapping[str, Ed25519PublicKey | Sequence[Ed25519PublicKey]]
"""Trusted node keys by node id: one key, or several while a node rotates its key."""


def open_usage_record(token: str, node_keys: NodeKeys) -> UsageRecord:
    """Verify a node-signed record and return it.

    ``node_keys`` maps node ids to their registered public key(s). The record must be
    signed by the key of the node it names (a node can't sign for another), be of the
    usage-record type, validate against the contract, and its payload must be exactly
    the record's canonical JSON (so no two parsers can read it differently).
    """
    node_id = peek_usage_record(token).get("node_id")
    key = node_keys.get(node_id) if isinstance(node_id, str) else None
    if key is None:
        shown = node_id[:64] if isinstance(node_id, str) else type(node_id).__name__
        raise UsageRecordError(f"usage record names node {shown!r}, which has no trusted key")
    try:
        document = envelope.verify(token, key, envelope.TYP_USAGE_RECORD)
    except envelope.EnvelopeError as exc:
        raise UsageRecordError(f"usage record from node {node_id!r}: {exc}") from None
    try:
        record = UsageRecord.model_validate(document, strict=True)
    except ValidationError as exc:
        raise UsageRecordError(f"usage record is not valid: {validation_summary(exc)}") from None
    if canonical_json(record.document()) != b64urldecode_canonical(token.split(".")[1]):
        raise UsageRecordError("usage record payload is not the record's canonical JSON")
    return record


def validation_summary(exc: ValidationError) -> str:
    """A short, content-free summary of a validation error: where, and what rule."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "document"
    return f"{where}: {err['msg']}"


# --- collecting records from a node (the management listener's contract) ----------------

USAGE_PATH = "/internal/usage"
USAGE_ACK_PATH = "/internal/usage/ack"
USAGE_PLACED_PATH = "/internal/usage/placed"
MAX_PAGE = 1000
MAX_ACK_IDS = 10_000

Cursor = Annotated[int, Field(ge=0, le=MAX_COUNT, strict=True)]
"""A position in one node's outbox: records get increasing cursors, stable across restarts."""


class OutboxItem(BaseModel):
    """One record waiting in a node's outbox, as ``GET /internal/usage`` lists it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cursor: Cursor
    record_id: str
    jws: str = Field(description="the node-signed record (open it with open_usage_record)")


class UsagePage(BaseModel):
    """``GET /internal/usage?after=CURSOR&limit=N``: unacknowledged records after a cursor.

    ``records`` are in increasing cursor order; pass ``next`` as ``after`` to read on
    (``next`` is ``after`` itself when there was nothing to read); ``more`` says whether
    another page is waiting already.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str
    records: list[OutboxItem]
    next: Cursor
    more: bool
    tree_head: str | None = Field(
        default=None,
        description="the newest signed tree head the control plane handed this node with an "
        "acknowledgement (a checkpoint note), kept where a restore of the control plane's "
        "database can't roll it back",
    )


class Placement(BaseModel):
    """Where the control plane logged one record: its ledger index and ``logged_at``.

    With the node-signed record they are the whole ledger leaf (``shared.ledger.LogEntry``),
    so a control plane restored from an older backup can append the leaf again, byte for
    byte, at the same index. ``leaf_hash`` (standard base64) lets both sides check that.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    record_id: str
    log_index: Annotated[int, Field(ge=0, le=MAX_COUNT, strict=True)]
    logged_at: str
    leaf_hash: str


class UsageAck(BaseModel):
    """``POST /internal/usage/ack``: what the control plane has stored for good.

    ``cursor`` acknowledges every record at or below it; ``record_ids`` acknowledges
    those records wherever they are (so a record the control plane can't accept yet needn't
    hold back the rest). Either or both; acknowledging again, or a cursor or id the node
    does not know, changes nothing.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cursor: Cursor | None = None
    record_ids: list[str] = Field(default_factory=list, max_length=MAX_ACK_IDS)
    placements: list[Placement] = Field(default_factory=list, max_length=MAX_ACK_IDS)
    tree_head: str | None = Field(
        default=None, max_length=8192, description="the latest signed tree head (checkpoint)"
    )

    @model_validator(mode="after")
    def _something(self) -> UsageAck:
        if self.cursor is None and not self.record_ids:
            raise ValueError("give a cursor, record_ids, or both")
        return self


class UsageAckResult(BaseModel):
    """The node's answer to an acknowledgement."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    acked_through: Cursor = Field(description="every record at or below this is acknowledged")
    pending: int = Field(description="records still waiting for an acknowledgement")
    unknown_ids: int = Field(description="record_ids this node holds no pending record for")


class PlacedItem(BaseModel):
    """An acknowledged record the node still holds, with where the control plane logged it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cursor: Cursor
    jws: str
    placement: Placement


class PlacedPage(BaseModel):
    """``GET /internal/usage/placed?from_index=N&limit=M``: acknowledged records the node
    still holds (within its receipt retention) whose ledger index is at least ``N``, in
    index order; what a restored control plane collects again. ``next`` is the index to
    ask from for the next page; ``more`` whether there is one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str
    records: list[PlacedItem]
    next: Annotated[int, Field(ge=0, strict=True)]
    more: bool
    tree_head: str | None = None
