"""The gateway's config: accepted only when signed, for this gateway, and newer.

The last good config is kept on disk (its PSKs are sealed to this gateway's WireGuard
key, so the file holds no usable secret) and verified again when the agent starts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from data_plane.config_store import ConfigRejected
from shared.envelope import EnvelopeError
from shared.gateway import GatewayConfig, open_gateway_config

logger = logging.getLogger(__name__)


class GatewayConfigStore:
    """Holds the current gateway config; :meth:`commit` is the only way to change it."""

    def __init__(self, path: Path, trusted_key: Ed25519PublicKey, gateway: str) -> None:
        self._path = path
        self._trusted = trusted_key
        self._gateway = gateway
        self.current: GatewayConfig | None = None

    @property
    def held_version(self) -> int:
        return self.current.version if self.current else 0

    def verify(self, token: str) -> GatewayConfig:
        """Signature, contract and target; raises :class:`ConfigRejected`."""
        try:
            config = open_gateway_config(token, self._trusted)
        except EnvelopeError as exc:
            raise ConfigRejected(401, "bad_signature", str(exc)) from None
        except ValidationError as exc:
            fields = sorted({".".join(str(p) for p in e["loc"]) or "$" for e in exc.errors()})
            raise ConfigRejected(
                400, "invalid_config", f"gateway config fails the contract at: {', '.join(fields)}"
            ) from None
        if config.gateway != self._gateway:
            raise ConfigRejected(
                409,
                "wrong_gateway",
                f"config is for gateway {config.gateway}, this is {self._gateway}",
            )
        return config

    def check(self, token: str) -> GatewayConfig:
        """:meth:`verify`, and the version must be above the one held."""
        config = self.verify(token)
        if config.version <= self.held_version:
            raise ConfigRejected(
                409,
                "stale_version",
                f"config version {config.version} is not newer than {self.held_version}",
                current_version=self.held_version,
            )
        return config

    def load_saved(self) -> tuple[str, GatewayConfig] | None:
        """The last good config from disk, verified again; None if there is none."""
        if not self._path.exists():
            return None
        token = self._path.read_text("ascii").strip()
        try:
            config = self.verify(token)
        except ConfigRejected as exc:
            logger.error("saved gateway config refused code=%s; starting without", exc.code)
            return None
        return token, config

    def commit(self, token: str, config: GatewayConfig) -> None:
        """Persist and switch to a config that was applied."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(self._path.name + ".tmp")
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(token)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._path)
        self.current = config
