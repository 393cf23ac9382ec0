"""The node's config: applied only when signed, newer, and pinning files that match.

The last good bundle is kept on disk (it holds hashes and limits, no content) so a
restarted node serves it again at once; it is verified again when loaded, since the
file could have been changed while the node was down.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from shared.config import (
    ConfigBundle,
    ModelSpec,
    api_key_matches,
    api_key_prefix,
    file_sha256,
    open_bundle,
)
from shared.envelope import EnvelopeError

logger = logging.getLogger(__name__)


class ConfigRejected(Exception):
    """A bundle was refused; the last good one keeps serving."""

    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


class ModelFileCheck:
    """sha256 of model files, remembered per (path, size, mtime) so a re-push is cheap."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int], str] = {}

    def sha256(self, path: str) -> str:
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
        if key not in self._known:
            self._known[key] = file_sha256(path)
        return self._known[key]

    def check(self, spec: ModelSpec) -> None:
        try:
            actual = self.sha256(spec.path)
        except OSError:
            raise ConfigRejected(
                422, "model_unavailable", f"model {spec.name}: file not readable on this node"
            ) from None
        if actual != spec.sha256:
            raise ConfigRejected(
                422,
                "model_hash_mismatch",
                f"model {spec.name}: file sha256 is {actual}, the pin says {spec.sha256}",
            )


class ConfigStore:
    """Holds the current bundle; ``apply`` is the only way to change it."""

    def __init__(
        self,
        state_dir: Path,
        trusted_key: Ed25519PublicKey,
        node_id: str,
    ) -> None:
        self._path = state_dir / "config.jws"
        self._trusted = trusted_key
        self._node_id = node_id
        self._files = ModelFileCheck()
        self.current: ConfigBundle | None = None

    def load_saved(self) -> ConfigBundle | None:
        """The last good bundle from disk, verified again; None if there is none."""
        if not self._path.exists():
            return None
        try:
            bundle = self._verify(self._path.read_text("ascii"))
        except ConfigRejected as exc:
            logger.error("saved config refused code=%s; starting without config", exc.code)
            return None
        self.current = bundle
        logger.info("config loaded from disk version=%d", bundle.version)
        return bundle

    def _verify(self, token: str) -> ConfigBundle:
        try:
            bundle = open_bundle(token, self._trusted)
        except EnvelopeError as exc:
            raise ConfigRejected(401, "bad_signature", str(exc)) from None
        except ValidationError as exc:
            fields = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})
            raise ConfigRejected(
                400, "invalid_config", f"bundle fails the contract at: {', '.join(fields)}"
            ) from None
        if bundle.node != self._node_id:
            raise ConfigRejected(
                409, "wrong_node", f"bundle is for node {bundle.node}, this is {self._node_id}"
            )
        for spec in bundle.models:
            self._files.check(spec)
        return bundle

    def check(self, token: str) -> ConfigBundle:
        """Verify ``token`` fully without applying it (raises ConfigRejected)."""
        bundle = self._verify(token)
        held = self.current.version if self.current else 0
        if bundle.version <= held:
            raise ConfigRejected(
                409,
                "stale_version",
                f"bundle version {bundle.version} is not newer than {held}",
                current_version=held,
            )
        return bundle

    def commit(self, token: str, bundle: ConfigBundle) -> None:
        """Persist and switch to a bundle that passed :meth:`check`."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(self._path.name + ".tmp")
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(token)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._path)
        self.current = bundle
        logger.info(
            "config applied version=%d models=%d clients=%d",
            bundle.version,
            len(bundle.models),
            len(bundle.clients),
        )

    # --- lookups on the current bundle ---------------------------------------------------

    def authenticate(self, key: str, now_ts: float) -> str | None:
        """The client id owning ``key``, or None (unknown, malformed, expired)."""
        bundle = self.current
        prefix = api_key_prefix(key)
        if bundle is None or prefix is None:
            return None
        for client in bundle.clients:
            for spec in client.api_keys:
                if spec.prefix != prefix:
                    continue
                if not api_key_matches(key, spec.sha256):
                    continue
                if spec.expires_at is not None and spec.expires_at.timestamp() <= now_ts:
                    return None
                return client.id
        return None
