"""Node statements: what a node says it runs, signed with its key, logged in the ledger.

A client asks a node ``GET /v1/attestation?nonce=N`` (the control plane asks the same on
the management link) and gets a compact JWS (``alg`` EdDSA, ``typ``
``sanctum-node-statement+jws``) signed by the node's usage-record key over::

    {"format": "sanctum-node-statement/1",
     "node_id": "<node>",
     "nonce": "<the asker's nonce, base64url of 16 to 64 bytes>",
     "issued_at": "<RFC 3339 UTC>",
     "release_digest": "<hex SHA-256 of the node's release manifest (shared.software)>",
     "llama_cpp": {"version": "<llama-cpp-python>", "library_sha256": "<hex>"},
     "models": [{"name", "version", "sha256": "<of the bytes llama.cpp mapped>"}, ...],
     "config": {"version": <int>, "sha256": "<hex of the applied compact JWS>"} | null,
     "engine_settings_sha256": "<hex SHA-256 of the engine settings' canonical JSON>",
     "keys": {"signing": <the node's Ed25519 JWK>,
              "management_tls_sha256": "<hex SHA-256 of its TLS certificate (DER)>" | null}}

Everything but ``nonce`` and ``issued_at`` is the statement's *claims*; their digest
(``claims_sha256``) names what ran. The control plane logs a node's statement when its
claims differ from the node's latest logged ones, as a ledger leaf of its own type
(:class:`StatementEntry`), and tells the node the leaf's index, which the node's usage
records then carry (``statement_index``).

What it proves: that the node holding that key said, at that time and for that nonce,
that it runs these bytes. Not what the hardware did: there is no TEE here, and an
operator who controls the node controls its key. See docs/security.md.

Files a verifier reads besides the statement:

- the *statement proof* (``sanctum-statement-proof/1``), from the control plane: the
  logged entry, its index, an inclusion proof and the signed checkpoint it leads to;
- the *allowed releases* (``sanctum-allowed-releases/1``): the release digests the
  control plane allows, signed by its log key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from shared import envelope
from shared.canonical import (
    CanonicalEncodingError,
    b64decode_canonical,
    b64urldecode_canonical,
    canonical_json,
    decode_nonce,
)
from shared.checkpoint import CheckpointError, open_checkpoint
from shared.config import Name, Sha256Hex
from shared.keys import Signer, b64url, key_id, public_jwk, public_key_bytes
from shared.ledger import (
    B64Hash,
    LogIndex,
    LogKey,
    PublicJwk,
    Report,
    b64_text,
    detached_jws,
    load_strict_json,
)
from shared.merkle import ProofError, leaf_hash, verify_inclusion
from shared.usage import (
    MAX_COUNT,
    Placement,
    Timestamp,
    UsageRecordError,
    check_compact_jws,
    format_timestamp,
    open_usage_record,
    parse_timestamp,
    validation_summary,
)

ATTESTATION_PATH = "/internal/attestation"
ATTESTATION_PLACED_PATH = "/internal/attestation/placed"
STATEMENT_FORMAT = "sanctum-node-statement/1"
PROOF_FORMAT = "sanctum-statement-proof/1"
RELEASES_FORMAT = "sanctum-allowed-releases/1"
DEFAULT_MAX_AGE_SECONDS = 300
"""A statement older than this (by its ``issued_at``) fails verification by default."""


class StatementError(ValueError):
    """A statement or one of its files is malformed or does not verify."""


def check_nonce(value: str) -> str:
    """A nonce as the contract spells it: canonical base64url of 16 to 64 bytes."""
    try:
        decode_nonce(value)
    except CanonicalEncodingError as exc:
        raise ValueError(str(exc)) from None
    return value


Nonce = Annotated[str, Field(max_length=128), AfterValidator(check_nonce)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class StatementModel(_Strict):
    name: Name
    version: Annotated[str, Field(pattern=r"^[\x21-\x7e]{1,64}$")]
    sha256: Sha256Hex


class LlamaBuild(_Strict):
    version: Annotated[str, Field(pattern=r"^[\x21-\x7e]{1,64}$")]
    library_sha256: Sha256Hex


class AppliedConfig(_Strict):
    version: Annotated[int, Field(ge=1, le=MAX_COUNT)]
    sha256: Sha256Hex


class NodeKeys(_Strict):
    signing: PublicJwk
    management_tls_sha256: Sha256Hex | None


class NodeStatement(_Strict):
    """A node's signed statement of what it runs (see the module docstring)."""

    format: Literal["sanctum-node-statement/1"]
    node_id: Name
    nonce: Nonce
    issued_at: Timestamp
    release_digest: Sha256Hex
    llama_cpp: LlamaBuild
    models: list[StatementModel] = Field(max_length=1024)
    config: AppliedConfig | None
    engine_settings_sha256: Sha256Hex
    keys: NodeKeys

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def claims(self) -> dict[str, Any]:
        """What the statement says runs: everything but the nonce and the time."""
        document = self.document()
        del document["nonce"], document["issued_at"]
        return document

    def claims_sha256(self) -> str:
        return hashlib.sha256(canonical_json(self.claims())).hexdigest()

    def signing_key(self) -> Ed25519PublicKey:
        return self.keys.signing.public_key()


def make_statement(
    *,
    node_id: str,
    nonce: str,
    release_digest: str,
    llama_cpp: dict[str, str],
    models: list[dict[str, str]],
    config: dict[str, Any] | None,
    engine_settings_sha256: str,
    signing_key: Ed25519PublicKey,
    management_tls_sha256: str | None,
    issued_at: datetime | None = None,
) -> NodeStatement:
    """Build (and validate) a statement; models are listed by name and version."""
    return NodeStatement.model_validate(
        {
            "format": STATEMENT_FORMAT,
            "node_id": node_id,
            "nonce": nonce,
            "issued_at": format_timestamp(issued_at or datetime.now(UTC)),
            "release_digest": release_digest,
            "llama_cpp": llama_cpp,
            "models": sorted(models, key=lambda m: (m["name"], m["version"], m["sha256"])),
            "config": config,
            "engine_settings_sha256": engine_settings_sha256,
            "keys": {
                "signing": public_jwk(signing_key),
                "management_tls_sha256": management_tls_sha256,
            },
        },
        strict=False,
    )


def sign_statement(statement: NodeStatement, key: Signer) -> str:
    """The node's compact JWS over the statement; ``key`` must be the one it names."""
    if public_key_bytes(key.public_key()) != public_key_bytes(statement.signing_key()):
        raise StatementError("the statement names another signing key than the one signing it")
    return envelope.sign(statement.document(), key, envelope.TYP_NODE_STATEMENT)


def open_statement(token: str) -> NodeStatement:
    """Verify a statement under the key it names and return it.

    The payload must be exactly the statement's canonical JSON. Whose key that is, the
    caller learns elsewhere: from the logged statement (:func:`verify_statement`) or the
    node's registration (the control plane).
    """
    try:
        check_compact_jws(token, "statement")
    except UsageRecordError as exc:
        raise StatementError(str(exc)) from None
    try:
        raw = load_strict_json(b64urldecode_canonical(token.split(".")[1]), "statement payload")
        statement = NodeStatement.model_validate(raw)
    except ValidationError as exc:
        raise StatementError(f"statement is not valid: {validation_summary(exc)}") from None
    except ValueError as exc:
        raise StatementError(str(exc)) from None
    try:
        envelope.verify(token, statement.signing_key(), envelope.TYP_NODE_STATEMENT)
    except envelope.EnvelopeError as exc:
        raise StatementError(f"statement signature: {exc}") from None
    if canonical_json(statement.document()) != b64urldecode_canonical(token.split(".")[1]):
        raise StatementError("statement payload is not the statement's canonical JSON")
    return statement


def peek_statement(token: str) -> dict[str, Any]:
    """The statement's JSON object, UNVERIFIED (the caller verified it before)."""
    try:
        check_compact_jws(token, "statement")
        raw = load_strict_json(b64urldecode_canonical(token.split(".")[1]), "statement payload")
    except (UsageRecordError, ValueError) as exc:
        raise StatementError(str(exc)) from None
    if not isinstance(raw, dict):
        raise StatementError("statement payload is not a JSON object")
    return raw


# --- the ledger leaf ---------------------------------------------------------------------


class StatementEntry(_Strict):
    """One ledger leaf of the statement type: a node statement, as the control plane
    logged it. Leaf data: the canonical JSON of ``{"logged_at", "node_jws",
    "statement"}`` (a usage-record leaf has ``record`` in place of ``statement``)."""

    statement: NodeStatement
    node_jws: str
    logged_at: Timestamp

    def document(self) -> dict[str, Any]:
        return {
            "logged_at": self.logged_at,
            "node_jws": self.node_jws,
            "statement": self.statement.document(),
        }

    def leaf_hash(self) -> bytes:
        return leaf_hash(canonical_json(self.document()))


def make_statement_entry(node_jws: str, logged_at: datetime | str) -> StatementEntry:
    statement = open_statement(node_jws)
    stamp = logged_at if isinstance(logged_at, str) else format_timestamp(logged_at)
    return StatementEntry(statement=statement, node_jws=node_jws, logged_at=stamp)


class PlacedStatement(_Strict):
    """A logged statement of this node, as the control plane placed it."""

    claims_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    jws: str
    placement: Placement


class StatementPlaced(_Strict):
    """``POST /internal/attestation/placed``: where the control plane logged a statement."""

    jws: str = Field(max_length=16384)
    log_index: int = Field(ge=0, le=MAX_COUNT, strict=True)
    logged_at: str
    leaf_hash: str


# --- the proof file and the allowed releases --------------------------------------------


class StatementProof(_Strict):
    format: Literal["sanctum-statement-proof/1"]
    log_key: LogKey
    checkpoint: str
    index: LogIndex
    entry: dict[str, Any]
    inclusion_proof: list[B64Hash]


def build_statement_proof(
    *,
    entry: StatementEntry,
    index: int,
    checkpoint: str,
    inclusion_proof: list[bytes],
    log_key: Ed25519PublicKey,
    log_key_name: str,
) -> bytes:
    """The proof file's canonical bytes: a logged statement and its way to a tree head."""
    document = {
        "format": PROOF_FORMAT,
        "log_key": {"name": log_key_name, "jwk": public_jwk(log_key)},
        "checkpoint": checkpoint,
        "index": index,
        "entry": entry.document(),
        "inclusion_proof": [b64_text(h) for h in inclusion_proof],
    }
    StatementProof.model_validate(document)
    return canonical_json(document) + b"\n"


class AllowedRelease(_Strict):
    digest: Sha256Hex
    name: Annotated[str, Field(max_length=128)]


class AllowedReleases(_Strict):
    format: Literal["sanctum-allowed-releases/1"]
    log_key: LogKey
    generated_at: Timestamp
    releases: list[AllowedRelease]
    signature: str


def _releases_signed_part(document: dict[str, Any]) -> dict[str, Any]:
    return {"generated_at": document["generated_at"], "releases": document["releases"]}


def build_allowed_releases(
    releases: list[tuple[str, str]],
    *,
    generated_at: datetime,
    log_key: Signer,
    log_key_name: str,
) -> bytes:
    """The allowed-releases file: ``(digest, name)`` pairs, signed by the log key."""
    document: dict[str, Any] = {
        "format": RELEASES_FORMAT,
        "log_key": {"name": log_key_name, "jwk": public_jwk(log_key.public_key())},
        "generated_at": format_timestamp(generated_at),
        "releases": [{"digest": d, "name": n} for d, n in sorted(releases)],
    }
    token = envelope.sign(_releases_signed_part(document), log_key, envelope.TYP_RELEASE_LIST)
    document["signature"] = detached_jws(token)
    AllowedReleases.model_validate(document)
    return canonical_json(document) + b"\n"


# --- verifying ---------------------------------------------------------------------------


@dataclass
class StatementReport(Report):
    """A statement verification, with what the statement says (trust it only when ``ok``)."""

    statement: NodeStatement | None = None
    log_index: int | None = None
    log_key_pinned: bool = False


def _log_key(
    file_key: LogKey, pinned: Ed25519PublicKey | None, report: StatementReport, what: str
) -> Ed25519PublicKey | None:
    own = file_key.jwk.public_key()
    if pinned is None:
        report.warnings.append(
            f"log key of the {what} taken from the file itself (kid {key_id(own)}): pin the "
            "control plane's key with --log-key to know who signed it"
        )
        return own
    if public_key_bytes(pinned) != public_key_bytes(own):
        report.fail(what, f"signed by log key {key_id(own)[:16]}, not the pinned key")
        return None
    return pinned


def _check_proof(
    data: bytes,
    statement: NodeStatement,
    log_key: Ed25519PublicKey | None,
    report: StatementReport,
    origin: str | None = None,
) -> StatementEntry | None:
    try:
        proof = StatementProof.model_validate(load_strict_json(data, "statement proof"))
    except ValidationError as exc:
        report.fail("statement proof", validation_summary(exc))
        return None
    except ValueError as exc:
        report.fail("statement proof", str(exc))
        return None
    key = _log_key(proof.log_key, log_key, report, "statement proof")
    if key is None:
        return None
    try:
        checkpoint = open_checkpoint(proof.checkpoint, key, name=proof.log_key.name, origin=origin)
    except CheckpointError as exc:
        report.fail("statement proof", f"checkpoint: {exc}")
        return None
    try:
        raw = proof.entry
        entry = make_statement_entry(raw.get("node_jws", ""), raw.get("logged_at", ""))
        if entry.document() != raw:
            raise StatementError("the logged entry is not what its node signed")
    except (StatementError, ValueError) as exc:
        report.fail("logged statement", str(exc))
        return None
    try:
        verify_inclusion(
            entry.leaf_hash(),
            proof.index,
            checkpoint.size,
            [b64decode_canonical(h) for h in proof.inclusion_proof],
            checkpoint.root_hash,
        )
    except ProofError as exc:
        report.fail("inclusion", f"the statement is not in the log at index {proof.index}: {exc}")
        return None
    report.log_index = proof.index
    report.passed.append(
        f"the statement is logged at index {proof.index} under a tree head of size "
        f"{checkpoint.size} signed by the log key"
    )
    logged = entry.statement
    if logged.node_id != statement.node_id:
        report.fail("logged statement", f"the log holds a statement of node {logged.node_id!r}")
    elif logged.claims_sha256() != statement.claims_sha256():
        report.fail(
            "logged statement",
            "the statement's claims (release, models, config, settings or keys) differ from "
            f"the ones logged for this node at index {proof.index} (a statement of another "
            "key, or the node changed since: check against its latest logged statement)",
        )
    else:
        report.passed.append("the statement claims exactly what the logged statement claims")
    return entry


def _check_releases(
    data: bytes, statement: NodeStatement, log_key: Ed25519PublicKey | None, report: StatementReport
) -> None:
    try:
        raw = load_strict_json(data, "allowed releases")
        releases = AllowedReleases.model_validate(raw)
    except ValidationError as exc:
        report.fail("allowed releases", validation_summary(exc))
        return
    except ValueError as exc:
        report.fail("allowed releases", str(exc))
        return
    key = _log_key(releases.log_key, log_key, report, "allowed releases")
    if key is None:
        return
    parts = releases.signature.split(".")
    try:
        if len(parts) != 3 or parts[1]:
            raise envelope.EnvelopeError("signature is not a detached compact JWS")
        token = f"{parts[0]}.{b64url(canonical_json(_releases_signed_part(raw)))}.{parts[2]}"
        envelope.verify(token, key, envelope.TYP_RELEASE_LIST)
    except envelope.EnvelopeError as exc:
        report.fail("allowed releases", str(exc))
        return
    allowed = {r.digest: r.name for r in releases.releases}
    if statement.release_digest in allowed:
        report.passed.append(
            f"release {statement.release_digest[:16]}... is allowed "
            f"({allowed[statement.release_digest] or 'unnamed'})"
        )
    else:
        report.fail(
            "release", f"release {statement.release_digest} is not one the control plane allows"
        )


def _check_receipt(
    token: str, statement: NodeStatement, index: int | None, report: StatementReport
) -> None:
    try:
        record = open_usage_record(token, {statement.node_id: statement.signing_key()})
    except UsageRecordError as exc:
        report.fail("receipt", f"not signed by this statement's node key: {exc}")
        return
    problems = []
    if record.release_digest != statement.release_digest:
        problems.append("its release is not the statement's")
    if statement.config is None or record.config_version != statement.config.version:
        problems.append("its config version is not the statement's")
    if record.model_sha256 not in {m.sha256 for m in statement.models}:
        problems.append("its model file is not one the statement lists")
    if record.statement_index is None:
        report.warnings.append(
            f"receipt {record.record_id} was signed before this node's statement was logged: "
            "it binds the release, config and model, not a log index"
        )
    elif index is not None and record.statement_index != index:
        problems.append(
            f"it names statement index {record.statement_index}, the logged statement is at {index}"
        )
    if problems:
        report.fail("receipt", "; ".join(problems))
    else:
        report.passed.append(
            f"receipt {record.record_id} was signed by this node under this release, config "
            "and model"
            + (
                " and names this logged statement"
                if index is not None and record.statement_index == index
                else ""
            )
        )


def verify_statement(
    token: str,
    *,
    nonce: str,
    proof: bytes | None = None,
    releases: bytes | None = None,
    log_key: Ed25519PublicKey | None = None,
    expect_models: list[str] | tuple[str, ...] = (),
    receipt: str | None = None,
    max_age_seconds: float | None = DEFAULT_MAX_AGE_SECONDS,
    now: datetime | None = None,
    origin: str | None = None,
) -> StatementReport:
    """Check a node statement the way a client would (see docs/audit.md).

    Signature (under the key it names, which must be the logged statement's), the
    asker's nonce and the statement's age; ``proof`` (required: without it the key is
    anyone's), that the same claims are in the ledger, under a tree head of the log
    ``origin`` when given; with ``releases``, that its release is allowed; each of
    ``expect_models`` (sha256) is among its models; a held ``receipt`` was signed by
    this node under the logged statement's release, config and model (and names its index).
    """
    report = StatementReport(log_key_pinned=log_key is not None)
    try:
        statement = open_statement(token.strip())
    except StatementError as exc:
        report.fail("statement", str(exc))
        return report
    report.statement = statement
    report.passed.append(
        f"the statement of node {statement.node_id} verifies under the key it names "
        f"(kid {key_id(statement.signing_key())[:16]}...)"
    )
    if statement.nonce != nonce:
        report.fail("nonce", "the statement answers another nonce (stale or replayed)")
    else:
        report.passed.append("the statement answers this nonce")
    if max_age_seconds is not None:
        age = ((now or datetime.now(UTC)) - parse_timestamp(statement.issued_at)).total_seconds()
        if age > max_age_seconds or age < -max_age_seconds:
            report.fail("freshness", f"issued {age:.0f} s from now (more than {max_age_seconds})")
    logged: StatementEntry | None = None
    if proof is not None:
        logged = _check_proof(proof, statement, log_key, report, origin)
    else:
        # Without the logged statement nothing ties the key the statement names to the
        # node: anyone's key would verify.
        report.fail(
            "anchor",
            "no statement proof given: the key the statement names is not tied to the node "
            "(get the proof of its logged statement from the control plane)",
        )
    if releases is not None:
        _check_releases(releases, statement, log_key, report)
    else:
        report.warnings.append("no allowed-releases file given: the release is unchecked")
    listed = {m.sha256 for m in statement.models}
    for sha in expect_models:
        if sha not in listed:
            report.fail("model", f"no model with sha256 {sha} is loaded on the node")
        else:
            report.passed.append(f"model {sha[:16]}... is loaded")
    if receipt is not None:
        # Against the logged statement (the receipt may be older than the node's claims
        # now), else against the fresh one.
        _check_receipt(
            receipt.strip(),
            logged.statement if logged is not None else statement,
            report.log_index if logged is not None else None,
            report,
        )
    return report
