"""The node's statement of what it runs (``shared.attestation``), and where it is logged.

The statement is made fresh for each asker's nonce from what is loaded now: the release
digest and the llama.cpp build (computed once at start), the sha256 of each loaded
model's bytes as llama.cpp mapped them (``EnginePool``), the applied config's version
and hash, the engine settings' hash, the node's signing key and its management TLS
certificate's fingerprint.

The control plane logs a statement when its claims differ from the node's latest
logged ones and posts back where
(``POST /internal/attestation/placed``); the node keeps those placements in
``state/attestation.json`` (the logged JWS with them, so a restored control plane can
be handed them again), and its usage records name the logged statement whose claims
are current when a session ends (``statement_index``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

import llama_cpp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import load_pem_x509_certificate

from data_plane.config_store import ConfigStore
from data_plane.settings import Settings
from data_plane.tls import ManagementTLS
from shared.attestation import (
    NodeStatement,
    PlacedStatement,
    StatementError,
    StatementPlaced,
    check_nonce,
    make_statement,
    open_statement,
    sign_statement,
)
from shared.canonical import jcs
from shared.keys import write_atomically
from shared.software import release_digest
from shared.usage import Placement

logger = logging.getLogger(__name__)

MAX_KEPT = 256
"""Logged statements a node keeps (newest first); far more than its claims ever change
between two collections."""


def llama_build() -> dict[str, str]:
    """llama-cpp-python's version and the SHA-256 over the shared libraries of the
    directory the loaded ``libllama`` came from (name, hash): ``LLAMA_CPP_LIB_PATH`` may
    point it elsewhere than the package's own ``lib``."""
    loaded = Path(llama_cpp.llama_cpp._lib._name).resolve()
    lines = []
    for path in sorted(p for p in loaded.parent.glob("*.so*") if p.is_file()):
        with path.open("rb") as f:
            lines.append(f"{path.name} {hashlib.file_digest(f, 'sha256').hexdigest()}\n")
    digest = hashlib.sha256("".join(lines).encode()).hexdigest()
    return {"version": llama_cpp.__version__, "library_sha256": digest}


def engine_settings_sha256(settings: Settings) -> str:
    return hashlib.sha256(jcs(settings.engine.model_dump(mode="json"))).hexdigest()


class BadNonce(ValueError):
    """The asker's nonce is not of the contract's form."""


class Attestor:
    """Makes the node's statements and remembers where they were logged."""

    def __init__(
        self,
        settings: Settings,
        key: Ed25519PrivateKey,
        config: ConfigStore,
        tls: ManagementTLS,
        mapped: dict[tuple[str, str], str],
        loaded: Any,
    ) -> None:
        self.node_id = settings.node_id
        self._key = key
        self._config = config
        self._tls = tls
        self._mapped = mapped  # (name, pinned sha256) -> sha256 of the mapped bytes
        self._loaded = loaded  # () -> the loaded engines
        self.release_digest = release_digest()
        self.llama = llama_build()
        self.settings_sha256 = engine_settings_sha256(settings)
        self._path = settings.data_dir / "state" / "attestation.json"
        self._lock = threading.Lock()
        self._placed: list[PlacedStatement] = self._read()

    def _read(self) -> list[PlacedStatement]:
        try:
            raw = json.loads(self._path.read_text("utf-8"))
            return [PlacedStatement.model_validate(item) for item in raw]
        except FileNotFoundError:
            return []
        except (ValueError, TypeError) as exc:
            logger.error("attestation state unreadable (%s): starting without", type(exc).__name__)
            return []

    def _tls_sha256(self) -> str | None:
        path = self._tls.cert_path
        if not path.exists():
            return None
        cert = load_pem_x509_certificate(path.read_bytes())
        return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()

    def statement(self, nonce: str) -> tuple[NodeStatement, str]:
        """A fresh statement for ``nonce`` and its JWS (raises :class:`BadNonce`)."""
        try:
            check_nonce(nonce)
        except ValueError as exc:
            raise BadNonce(str(exc)) from None
        statement = self._build(nonce)
        return statement, sign_statement(statement, self._key)

    def _build(self, nonce: str) -> NodeStatement:
        release = self._config.current
        models = []
        for engine in self._loaded():
            info = engine.info
            mapped = self._mapped.get((info.name, info.sha256))
            if mapped is None:
                continue  # loaded before its mapped bytes were hashed: never claimed
            models.append({"name": info.name, "version": info.version, "sha256": mapped})
        return make_statement(
            node_id=self.node_id,
            nonce=nonce,
            release_digest=self.release_digest,
            llama_cpp=self.llama,
            models=models,
            config=(
                {"version": release.version, "sha256": self._config.current_sha256}
                if release is not None and self._config.current_sha256
                else None
            ),
            engine_settings_sha256=self.settings_sha256,
            signing_key=self._key.public_key(),
            management_tls_sha256=self._tls_sha256(),
        )

    def place(self, placed: StatementPlaced) -> PlacedStatement:
        """Keep where the control plane logged one of this node's statements.

        The JWS must be a statement this node signed (its own key, its own id); the
        index is the control plane's word, which the ledger's proofs check.
        """
        try:
            statement = open_statement(placed.jws)
        except StatementError as exc:
            raise ValueError(str(exc)) from None
        own = self._key.public_key()
        if (
            statement.node_id != self.node_id
            or statement.signing_key().public_bytes_raw() != own.public_bytes_raw()
        ):
            raise ValueError("the statement is not this node's")
        item = PlacedStatement(
            claims_sha256=statement.claims_sha256(),
            jws=placed.jws,
            placement=Placement(
                record_id=statement.claims_sha256(),
                log_index=placed.log_index,
                logged_at=placed.logged_at,
                leaf_hash=placed.leaf_hash,
            ),
        )
        with self._lock:
            kept = [p for p in self._placed if p.placement.log_index != placed.log_index]
            self._placed = sorted([item, *kept], key=lambda p: p.placement.log_index, reverse=True)[
                :MAX_KEPT
            ]
            data = json.dumps([p.model_dump(mode="json") for p in self._placed]).encode()
            write_atomically(self._path, data, 0o600)
        logger.info("statement logged index=%d", placed.log_index)
        return item

    def placed(self) -> list[PlacedStatement]:
        with self._lock:
            return list(self._placed)

    def current_index(self) -> int | None:
        """The log index of the statement whose claims hold now, once it is logged."""
        claims = self._build(_PROBE_NONCE).claims_sha256()
        with self._lock:
            for item in self._placed:
                if item.claims_sha256 == claims:
                    return item.placement.log_index
        return None

    def record_fields(self) -> dict[str, Any]:
        """What every usage record signed now carries about the node's software.

        Never raises: a record is made at every session's end, and a statement that
        can't be built (a certificate unreadable, say) only leaves its index out."""
        release = self._config.current
        try:
            index = self.current_index()
        except Exception as exc:  # a record is worth more than its statement index
            logger.error("statement not built for a usage record: %s", type(exc).__name__)
            index = None
        return {
            "config_version": release.version if release is not None else None,
            "release_digest": self.release_digest,
            "statement_index": index,
        }


# Claims don't depend on the nonce: a fixed one to compute the current claims with.
_PROBE_NONCE = "AAAAAAAAAAAAAAAAAAAAAA"
