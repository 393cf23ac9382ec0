"""Typed settings for a data-plane node, read from ``SANCTUM_DP_*`` environment variables.

Nested sections use ``__``: ``SANCTUM_DP_ENGINE__THREADS=4``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import Name


class ListenSettings(BaseModel):
    """Where the two listeners bind. The management one belongs on the management link."""

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    management_host: str = "127.0.0.1"
    management_port: int = Field(default=8001, ge=0, le=65535)


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


class SessionSettings(BaseModel):
    default_ttl_seconds: int = Field(default=900, ge=1)
    max_ttl_seconds: int = Field(default=86_400, ge=1)
    sweep_interval_seconds: float = Field(default=5.0, gt=0)


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


class Settings(BaseSettings):
    """A node's settings. Nothing here is client content."""

    model_config = SettingsConfigDict(env_prefix="SANCTUM_DP_", env_nested_delimiter="__")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("var/data-plane")
    node_id: Name = Field(default="node-1", description="named in every usage record")
    control_plane_public_key: Path | None = Field(
        default=None, description="PEM of the key that signs config (default: data_dir/keys)"
    )
    node_private_key: Path | None = Field(
        default=None, description="PEM of this node's signing key (default: data_dir/keys)"
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="client API bodies")
    max_management_body_bytes: int = Field(
        default=64 * 1_048_576, ge=1024, description="management bodies (documents to ingest)"
    )
    log_level: str = "INFO"
    listen: ListenSettings = ListenSettings()
    engine: EngineSettings = EngineSettings()
    sessions: SessionSettings = SessionSettings()
    outbox: OutboxSettings = OutboxSettings()

    @model_validator(mode="after")
    def _production_needs_explicit_keys(self) -> Settings:
        if self.environment == "production" and self.control_plane_public_key is None:
            raise ValueError(
                "production needs SANCTUM_DP_CONTROL_PLANE_PUBLIC_KEY: a node must not trust "
                "a key it found lying in its own data directory"
            )
        if self.environment == "production" and self.node_private_key is None:
            raise ValueError(
                "production needs SANCTUM_DP_NODE_PRIVATE_KEY: the key that signs usage "
                "records is provisioned and registered with the control plane, never "
                "made up at start"
            )
        return self

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def control_plane_key_path(self) -> Path:
        return self.control_plane_public_key or self.keys_dir / "control-plane.pub"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"
