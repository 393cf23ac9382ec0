"""Typed settings for a data-plane node, read from ``SANCTUM_DP_*`` environment variables.

Nested sections use ``__``: ``SANCTUM_DP_ENGINE__THREADS=4``. A ``SANCTUM_DP_*`` variable
that is not a setting is refused at start, naming the closest one (``shared.settings``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shared.config import Name
from shared.listeners import is_loopback
from shared.metrics import MetricsSettings
from shared.settings import StrictEnvSettings
from shared.tracing import TracingSettings
from shared.trust import TRUST_FILE


class ListenSettings(BaseModel):
    """Where the two listeners bind. The management one belongs on the management link."""

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    management_host: str = "127.0.0.1"
    management_port: int = Field(default=8001, ge=0, le=65535)


class NodeMetricsSettings(MetricsSettings):
    """``SANCTUM_DP_METRICS__*``: the Prometheus scrape listener (shared.metrics)."""

    per_client: bool = Field(
        default=False,
        description="series by client id too (tokens, generations): one set per client, "
        "so turn it on where the client count is small",
    )


class BackboneSettings(BaseModel):
    """The node's end of the backbone (docs/network.md): its WireGuard key, the tools.

    With a key set, the client API belongs on the node's backbone address
    (``SANCTUM_DP_LISTEN__API_HOST``) and the config says which gateways may reach it.
    """

    private_key: Path | None = Field(
        default=None, description="file holding the node's backbone WireGuard private key"
    )
    wg_binary: str = "wg"
    ip_binary: str = "ip"


class EngineSettings(BaseModel):
    """llama.cpp and its scheduler, for each loaded model (docs/engine.md).

    ``context_size`` (tokens one session's sequence may hold) overrides the pin's when
    set; the context reserves ``max_sequences`` times that many KV cells.
    """

    threads: int = Field(
        default_factory=lambda: max(1, os.cpu_count() or 1), ge=1, description="CPU threads"
    )
    n_gpu_layers: int = Field(default=0, ge=-1)
    context_size: int | None = Field(default=None, ge=128, description="tokens per sequence")
    max_sequences: int = Field(
        default=8, ge=1, le=256, description="sessions decoded together (KV sequences)"
    )
    batch_size: int = Field(default=512, ge=8, le=8192, description="tokens per decode step")
    prefill_chunk: int = Field(
        default=64, ge=1, le=8192, description="prompt tokens per step while others decode"
    )
    max_queue: int = Field(default=64, ge=0, description="generations waiting before 429")
    flash_attn: bool = Field(
        default=True, description="flash attention (keeps greedy output batch-independent)"
    )
    max_parked_bytes: int = Field(
        default=1 << 30,
        ge=0,
        description="RAM for KV state parked out of the slots, all clients together; past "
        "it the oldest parked state is dropped (its session is evaluated afresh)",
    )
    time_slice_tokens: int = Field(
        default=256,
        ge=0,
        description="with more clients than slots, a generation that decoded this many "
        "tokens gives its slot to a client with none (0: never)",
    )
    client_max_running: int | None = Field(
        default=None,
        ge=1,
        description="a client's generations running at once (default: every slot)",
    )
    client_max_queued: int = Field(
        default=16, ge=0, description="a client's generations waiting for a slot, before 429"
    )
    client_max_parked_bytes: int = Field(
        default=256 << 20, ge=0, description="RAM for one client's parked KV state"
    )
    speculation: Literal["prompt_lookup", "off"] = Field(
        default="off",
        description="speculative decoding: prompt_lookup drafts a session's next tokens "
        "from its own prompt and output and verifies them in the same step (same output "
        "token for token); off decodes one token a step",
    )
    speculation_max_draft: int = Field(
        default=8, ge=1, le=64, description="draft tokens one session may verify in a step"
    )
    max_loaded_models: int | None = Field(
        default=None,
        ge=1,
        description="models this node can hold loaded at once (default: no limit). A "
        "new version is loaded beside the old one only while that keeps within it; "
        "otherwise the old one drains and unloads before the new one loads "
        "(docs/operations.md, upgrading a model)",
    )


class SessionSettings(BaseModel):
    default_ttl_seconds: int = Field(default=900, ge=1)
    max_ttl_seconds: int = Field(default=86_400, ge=1)
    sweep_interval_seconds: float = Field(default=5.0, gt=0)
    max_open: int = Field(
        default=1024, ge=1, description="sessions open on this node, all clients together"
    )
    drain_grace_seconds: float = Field(
        default=30.0,
        gt=0,
        description="when a model version retires (or a client leaves the node), how long "
        "its turns in flight may run on before their sessions end anyway",
    )


class LimitsSettings(BaseModel):
    """What one request may ask of the node (docs/security.md). Each limit is checked
    before the work it bounds, and a request past one gets a 4xx that names it."""

    max_messages: int = Field(
        default=2048, ge=1, description="messages in a chat request (with a session's own)"
    )
    max_prompt_chars: int = Field(
        default=262_144,
        ge=1024,
        description="characters of message content, or of a prompt, in one request",
    )
    max_stop: int = Field(default=16, ge=0, le=256, description="stop strings in a request")
    max_stop_chars: int = Field(default=128, ge=1, le=4096, description="characters a stop")
    prompt_workers: int = Field(
        default=2, ge=1, le=64, description="threads that build prompts (templates, tokens)"
    )
    prompt_queue_per_client: int = Field(
        default=64,
        ge=1,
        description="a client's prompts waiting for those threads (its sessions bound them too)",
    )
    prompt_queue: int = Field(default=256, ge=1, description="prompts waiting, all clients")


class OutboxSettings(BaseModel):
    """The usage outbox: signed records kept on disk until the control plane stores them."""

    receipt_retention_seconds: int = Field(
        default=7 * 86_400,
        ge=0,
        description="how long a record stays after it is acknowledged (GET /v1/receipts)",
    )
    segment_max_bytes: int = Field(default=4 * 1_048_576, ge=4096)
    segment_max_age_seconds: float = Field(
        default=3600, gt=0, description="start a new segment after this, so old ones can go"
    )
    compact_interval_seconds: float = Field(default=60, gt=0)


class RetrievalSettings(BaseModel):
    """Retrieval: the embedder, the knowledge-base index (Qdrant) and context assembly.

    Knowledge bases live in Qdrant's local mode under ``data_dir/qdrant`` unless
    ``qdrant_url`` names a Qdrant server; the code path is the same either way.
    """

    enabled: bool = Field(default=True, description="load the embedder and the index")
    embedding_model: str = Field(
        default="all-MiniLM-L6-v2", min_length=1, max_length=200, description="its API name"
    )
    embedder_path: Path | None = Field(
        default=None, description="sentence-transformers model folder (default: the bundled one)"
    )
    embedder_threads: int = Field(
        default=1,
        ge=1,
        description="torch threads for ingestion and session documents; one leaves the "
        "other cores to llama.cpp",
    )
    embedder_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="CPU niceness of the embedder's thread: the engine's decode goes first",
    )
    embedder_query_threads: int = Field(
        default_factory=lambda: max(1, os.cpu_count() or 1),
        ge=1,
        description="torch threads for a chat's query: a few milliseconds on every core, "
        "on the path to the first token",
    )
    embed_batch_size: int = Field(default=32, ge=1, le=1024)
    embed_batch_tokens: int = Field(
        default=512,
        ge=16,
        description="tokens per embedding batch: how long another client's query may wait",
    )
    embedder_queue_per_client: int = Field(
        default=64, ge=1, description="a client's calls waiting for the embedder"
    )
    embedder_queue: int = Field(default=256, ge=1, description="calls waiting, all clients")
    qdrant_path: Path | None = Field(
        default=None, description="local mode's folder (default: data_dir/qdrant)"
    )
    qdrant_url: str | None = Field(
        default=None, description="a Qdrant server instead of local mode"
    )
    qdrant_api_key: SecretStr | None = None
    collection_prefix: str = Field(
        default="sanctum", pattern=r"^[a-z][a-z0-9_]{0,31}$", description="namespace in Qdrant"
    )
    chunk_tokens: int = Field(default=128, ge=16, le=254, description="embedder tokens a chunk")
    chunk_overlap_tokens: int = Field(default=24, ge=0)
    top_k_default: int = Field(default=4, ge=1)
    top_k_max: int = Field(default=16, ge=1, le=256)
    max_document_bytes: int = Field(
        default=16 * 1_048_576, ge=1024, description="one file loaded into a knowledge base"
    )
    max_session_document_bytes: int = Field(
        default=256 * 1024, ge=1024, description="one session document's text (UTF-8)"
    )
    max_session_documents: int = Field(default=32, ge=1, description="documents per session")
    max_session_file_bytes: int = Field(
        default=768 * 1024,
        ge=1024,
        description="one session document sent as a file (PDF, HTML, text), before parsing",
    )
    session_documents_client_bytes: int = Field(
        default=128 * 1_048_576,
        ge=1024,
        description="RAM for one client's session documents (text and vectors), all sessions",
    )
    session_documents_node_bytes: int = Field(
        default=1024 * 1_048_576,
        ge=1024,
        description="RAM for every session document on the node (text and vectors)",
    )
    max_pdf_pages: int = Field(default=200, ge=1, description="pages of a PDF that is parsed")
    parse_timeout_seconds: float = Field(
        default=10, gt=0, description="parsing one session document, at most"
    )
    ingest_parse_timeout_seconds: float = Field(
        default=120, gt=0, description="parsing one knowledge-base file, at most"
    )
    parser_memory_bytes: int = Field(
        default=1024 * 1_048_576,
        ge=64 * 1_048_576,
        description="address space of the process that parses documents",
    )
    max_embedding_inputs: int = Field(default=256, ge=1, description="inputs per embeddings call")
    max_embedding_tokens: int = Field(
        default=16_384, ge=1, description="tokens of all inputs of one embeddings call"
    )
    max_context_tokens: int = Field(
        default=1024, ge=64, description="model tokens of retrieved context per turn, at most"
    )
    answer_reserve_tokens: int = Field(
        default=256,
        ge=16,
        description="model tokens kept free for the answer when the request sets no max_tokens",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RetrievalSettings:
        if self.chunk_overlap_tokens >= self.chunk_tokens // 2:
            raise ValueError("chunk_overlap_tokens must be less than half of chunk_tokens")
        if self.top_k_default > self.top_k_max:
            raise ValueError("top_k_default must not exceed top_k_max")
        return self


class Settings(StrictEnvSettings):
    """A node's settings. Nothing here is client content."""

    model_config = SettingsConfigDict(env_prefix="SANCTUM_DP_", env_nested_delimiter="__")

    # SANCTUM_DP_* names that data-plane.env holds for another reader: none so far
    # (infra/scripts/node-firewall.sh reads SANCTUM_DP_LISTEN__API_PORT, a setting).
    read_elsewhere: ClassVar[frozenset[str]] = frozenset()

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("var/data-plane")
    node_id: Name = Field(default="node-1", description="named in every usage record")
    trust_keys: Path | None = Field(
        default=None,
        description="the control plane's published key set, JSON (default: "
        "data_dir/keys/control-plane-keys.json): the anchor of trust for config and "
        "management requests",
    )
    node_private_key: Path | None = Field(
        default=None, description="PEM of this node's signing key (default: data_dir/keys)"
    )
    tls_dir: Path | None = Field(
        default=None,
        description="the management listener's TLS key, certificate and CA, as `sanctum "
        "enrol` writes them (default: data_dir/tls); enrolled, the listener serves mutual "
        "TLS only",
    )
    models_dir: Path | None = Field(
        default=None,
        description="where the node keeps model files fetched from the storage link, "
        "as <sha256>.gguf (default: data_dir/models)",
    )
    model_fetch_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="fetching a model file: connecting, or waiting for its next bytes",
    )
    model_fetch_min_bytes_per_second: int = Field(
        default=1 << 20,
        ge=1,
        description="the slowest a model file fetch may be on the whole: it is abandoned "
        "after the timeout plus its size at this rate (1 MiB/s: a 4 GiB file gets about "
        "70 minutes)",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="client API bodies")
    max_management_body_bytes: int = Field(
        default=64 * 1_048_576, ge=1024, description="management bodies (documents to ingest)"
    )
    log_level: str = "INFO"
    listen: ListenSettings = ListenSettings()
    backbone: BackboneSettings = BackboneSettings()
    engine: EngineSettings = EngineSettings()
    sessions: SessionSettings = SessionSettings()
    limits: LimitsSettings = LimitsSettings()
    outbox: OutboxSettings = OutboxSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    metrics: NodeMetricsSettings = NodeMetricsSettings()
    tracing: TracingSettings = TracingSettings()

    @model_validator(mode="after")
    def _production_needs_explicit_keys(self) -> Settings:
        if self.environment == "production" and self.trust_keys is None:
            raise ValueError(
                "production needs SANCTUM_DP_TRUST_KEYS: a node must not trust keys it "
                "found lying in its own data directory"
            )
        if self.environment == "production" and self.node_private_key is None:
            raise ValueError(
                "production needs SANCTUM_DP_NODE_PRIVATE_KEY: the key that signs usage "
                "records is provisioned and registered with the control plane, never "
                "made up at start"
            )
        if self.environment == "production" and self.backbone.private_key is None:
            host = self.listen.api_host
            if not is_loopback(host):
                raise ValueError(
                    f"production serves the client API on the backbone only: {host} is "
                    "not loopback, so set SANCTUM_DP_BACKBONE__PRIVATE_KEY and the node's "
                    "backbone address as SANCTUM_DP_LISTEN__API_HOST"
                )
        return self

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def tls_path(self) -> Path:
        return self.tls_dir or self.data_dir / "tls"

    @property
    def qdrant_path(self) -> Path:
        return self.retrieval.qdrant_path or self.data_dir / "qdrant"

    @property
    def trust_keys_path(self) -> Path:
        return self.trust_keys or self.keys_dir / TRUST_FILE

    @property
    def models_path(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"
