"""The config bundle: what the control plane tells a data-plane node to serve.

It holds no client content: model pins, clients with *hashes* of their API keys, what
each client may use, and limits. It travels signed (``shared.envelope``, typ
``sanctum-config+jws``) and a node applies it only if the signature, the version and
every pinned file's sha256 check out.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from shared import envelope
from shared.backbone import BackboneInterface
from shared.keys import Signer
from shared.release import Name, Release

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
ModelVersion = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,64}$")]
"""A model pin's version label: 1-64 printable ASCII characters, no spaces (it is signed
into every usage record, whose contract allows no more)."""

API_KEY_PREFIX = "sk-snc"
_API_KEY_RE = re.compile(rf"^{API_KEY_PREFIX}-([A-Za-z0-9]{{8}})-([A-Za-z0-9_-]{{32,}})$")


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_SOURCE_CHARS = 2048


def artifact_source_problem(source: str) -> str | None:
    """What is wrong with ``source`` as the place nodes fetch a model file from, or None.

    It is an ``http``/``https`` URL on the storage link (a plain file server such as
    nginx) or an absolute path the nodes can read (a mount on the storage link). A URL
    carries no credentials, neither user info nor a query string (a presigned token):
    sources are stored, logged in the change trail and signed into bundles.
    """
    if len(source) > MAX_SOURCE_CHARS:
        return f"a source is at most {MAX_SOURCE_CHARS} characters"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in source):
        return "a source has no spaces or control characters"
    if source.startswith("/"):
        return None
    try:
        url = urlsplit(source)
        url.port  # noqa: B018 (parsing it refuses a malformed port)
    except ValueError:
        return "a source URL must parse"
    if url.scheme not in ("http", "https"):
        return "a source is an http(s) URL or an absolute path"
    if not url.hostname:
        return "a source URL names a host"
    if "@" in url.netloc:
        return "a source URL carries no credentials (user:password@)"
    if url.query or url.fragment:
        return "a source URL has no query string or fragment (a token there is a credential)"
    return None


class ModelSpec(_Contract):
    """A pinned GGUF model: the node loads its file only if the file's sha256 is ``sha256``.

    The file is named one of two ways. ``path``: a file the operator put at that path on
    the node. ``source`` (with ``size``): the node keeps the file as
    ``<models dir>/<sha256>.gguf`` and, when it is missing, fetches it from ``source``,
    an artifact store on the storage link, and places it only if its sha256 and size are
    the pin's (docs/operations.md, "Models on the storage link").
    """

    name: Name
    version: ModelVersion
    sha256: Sha256Hex
    path: str | None = Field(
        default=None, min_length=1, description="GGUF file path on the node (no source)"
    )
    source: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SOURCE_CHARS,
        description="where nodes fetch the file: an http(s) URL or an absolute path",
    )
    size: int | None = Field(default=None, ge=1, le=2**50, description="file size, bytes")
    context_size: int = Field(ge=128, le=1_048_576)
    chat_template: str | None = Field(
        default=None, description="Jinja chat template; the GGUF's own when null"
    )
    gpu_layers: int | None = Field(
        default=None,
        ge=-1,
        le=100_000,
        description="layers offloaded to the GPU (-1: all); the node's setting when null",
    )

    @model_validator(mode="after")
    def _one_file(self) -> ModelSpec:
        if (self.path is None) == (self.source is None):
            raise ValueError("a model names its file by path or by source, exactly one")
        if self.source is not None:
            if self.size is None:
                raise ValueError("a model fetched from a source needs its size")
            problem = artifact_source_problem(self.source)
            if problem is not None:
                raise ValueError(problem)
        return self


class ApiKeySpec(_Contract):
    """An API key as the node knows it: its public prefix and the SHA-256 of the key."""

    prefix: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{8}$")]
    sha256: Sha256Hex
    expires_at: datetime | None = None


Count = Annotated[int, Field(ge=1, le=10**15)]


class ClientLimits(_Contract):
    """What one client may use of the node this bundle is for.

    Rates and quotas are this node's share of the client's own (the control plane
    divides them among the nodes that serve the client); ``None`` means no limit. Caps
    left ``None`` take the node's defaults (docs/engine.md).
    """

    max_sessions: int = Field(default=8, ge=1, le=10_000)
    max_tokens_per_request: int = Field(default=2048, ge=1, le=1_000_000)
    max_running: int | None = Field(
        default=None, ge=1, le=4096, description="generations decoding at once, per model"
    )
    max_queued: int | None = Field(
        default=None, ge=0, le=100_000, description="generations waiting for a slot, per model"
    )
    max_parked_bytes: int | None = Field(
        default=None, ge=0, le=2**50, description="RAM for its parked KV state, per model"
    )
    requests_per_minute: Count | None = None
    tokens_per_minute: Count | None = None
    tokens_per_day: Count | None = None
    tokens_per_month: Count | None = None


class ClientSpec(_Contract):
    """A client: its keys, the models and knowledge bases it may use, its limits."""

    id: Name
    name: str = Field(default="", max_length=200)
    api_keys: tuple[ApiKeySpec, ...] = ()
    models: tuple[Name, ...] = ()
    knowledge_bases: tuple[Name, ...] = ()
    embeddings: bool = Field(default=False, description="may call /v1/embeddings")
    limits: ClientLimits = ClientLimits()


class PoolSpec(_Contract):
    """The node pool this node belongs to. A dedicated pool serves one client: its
    bundle holds that client and no other, and a node refuses one that holds more."""

    name: Name
    dedicated: bool = False


class ConfigBundle(Release):
    """Version ``version`` of one node's config (``shared.release``: versions only go up,
    it expires, and it carries the keys the node trusts)."""

    node: Name
    pool: PoolSpec | None = Field(
        default=None, description="its pool: the clients and models here are placed on it"
    )
    models: tuple[ModelSpec, ...] = ()
    staged: tuple[ModelSpec, ...] = Field(
        default=(),
        description="new versions staged to replace a model of the same name in "
        "``models``: the node verifies each file and loads it if it has room, reports "
        "them in its health, and serves none of them",
    )
    clients: tuple[ClientSpec, ...] = ()
    backbone: BackboneInterface | None = Field(
        default=None, description="the gateways that may reach this node's client API"
    )

    @field_validator("models")
    @classmethod
    def _unique_models(cls, models: tuple[ModelSpec, ...]) -> tuple[ModelSpec, ...]:
        names = [m.name for m in models]
        if len(names) != len(set(names)):
            raise ValueError("model names must be unique")
        return models

    @model_validator(mode="after")
    def _staged_replace_a_model(self) -> ConfigBundle:
        names = [m.name for m in self.staged]
        if len(names) != len(set(names)):
            raise ValueError("staged model names must be unique")
        for spec in self.staged:
            serving = self.model(spec.name)
            if serving is None:
                raise ValueError(f"staged model {spec.name} replaces no model of the bundle")
            if serving.sha256 == spec.sha256:
                raise ValueError(f"staged model {spec.name} is the file that serves already")
        return self

    @field_validator("clients")
    @classmethod
    def _unique_clients(cls, clients: tuple[ClientSpec, ...]) -> tuple[ClientSpec, ...]:
        ids = [c.id for c in clients]
        if len(ids) != len(set(ids)):
            raise ValueError("client ids must be unique")
        return clients

    @model_validator(mode="after")
    def _dedicated_to_one(self) -> ConfigBundle:
        if self.pool is not None and self.pool.dedicated and len(self.clients) > 1:
            raise ValueError(
                f"pool {self.pool.name} is dedicated: its nodes serve one client, "
                f"and this bundle holds {len(self.clients)}"
            )
        return self

    @property
    def target(self) -> str:
        return self.node

    def model(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)

    def document(self) -> dict[str, Any]:
        # Without staged models the field is left out: a node that predates staging
        # (its contract forbids unknown fields) still takes the bundle.
        return self.model_dump(mode="json", exclude={"staged"} if not self.staged else None)


def sign_bundle(bundle: ConfigBundle, key: Signer) -> str:
    """The bundle in its signed envelope, ready for ``PUT /internal/config``."""
    return envelope.sign(bundle.document(), key, envelope.TYP_CONFIG)


def open_bundle(token: str | bytes, trusted: Any) -> ConfigBundle:
    """Verify the envelope and parse the bundle (raises EnvelopeError / ValidationError)."""
    return ConfigBundle.model_validate(envelope.verify(token, trusted, envelope.TYP_CONFIG))


# --- API keys -------------------------------------------------------------------------


def new_api_key() -> tuple[str, str, str]:
    """Make a key. Returns ``(key, prefix, sha256)``; only the last two are ever stored."""
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
    prefix = "".join(secrets.choice(alphabet) for _ in range(8))
    key = f"{API_KEY_PREFIX}-{prefix}-{secrets.token_urlsafe(32)}"
    return key, prefix, hash_api_key(key)


def hash_api_key(key: str) -> str:
    """SHA-256 of the key. Keys carry 256 random bits, so a fast hash is the right one."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def api_key_prefix(key: str) -> str | None:
    """The public prefix of a well-formed key, or None."""
    match = _API_KEY_RE.match(key)
    return match.group(1) if match else None


def api_key_matches(key: str, stored_sha256: str) -> bool:
    """Constant-time comparison of a presented key against a stored hash."""
    return hmac.compare_digest(hash_api_key(key), stored_sha256)


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
