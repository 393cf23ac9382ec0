"""Signed releases held by a node or a gateway: applied only when signed by a trusted
config key, meant for this target, unexpired and above the version floor.

One store serves both (a node's config bundle, a gateway's config); each plugs in how
to open its document and what else to check (a node: its model files). On disk, under
the target's state directory:

- ``<name>.jws``: the last good release, verified again at start (it may have been
  changed while the process was down);
- ``<name>.floor``: the highest version ever applied. It only rises and is written
  before the release it covers, so neither a restart, a saved release that no longer
  verifies, nor a failed apply lets an older signed release back in;
- ``trust.json``: the key set the last release brought (``shared.release``), which
  replaces the anchor file's set for good (:class:`TrustStore`).

A release that expires stops counting as usable: the target refuses clients (503) and
says so in its health until the control plane's next one arrives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Generic, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from data_plane.model_files import (
    ModelFetchFailed,
    ModelFetchPending,
    ModelFileMismatch,
    ModelFiles,
)
from shared import management
from shared.config import ConfigBundle, ModelSpec, api_key_matches, api_key_prefix, file_sha256
from shared.envelope import EnvelopeError
from shared.keys import KeyFileError, write_atomically
from shared.release import Release
from shared.trust import CONFIG, KeySet

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=Release)
NO_CONFIG = "no config applied"
MODEL_HASH_MISMATCH = "model_hash_mismatch"
MODEL_FETCH_PENDING = "model_fetch_pending"
# What a push refused while a model file is fetched is told to wait (Retry-After). The
# control plane's rollout retries a 5xx with its own backoff, and its health poll pushes
# again a release that failed; this is the hint for anyone else.
FETCH_RETRY_AFTER_SECONDS = 30


class ConfigRejected(Exception):
    """A release was refused; the last good one keeps serving."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: int | None = None,
        **extra: object,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.extra = extra


class TrustStore:
    """The control-plane keys this target trusts: the anchor file's, then the releases'.

    The anchor (``SANCTUM_*_TRUST_KEYS``, installed by the operator) bootstraps trust on
    a fresh target; every release applied since, signed by a key trusted then, brings
    the set to trust from then on (a rotation), kept in ``trust.json``. Once a target has
    applied a release, the anchor is not consulted again: an old anchor file put back
    (or a lost ``trust.json``) must not revive keys retired since. A target whose
    ``trust.json`` is lost after it applied releases trusts nothing until an operator
    resets it on purpose (docs/operations.md, "Rotating keys").
    """

    def __init__(self, anchor: Path, saved: Path) -> None:
        self._saved = saved
        self.problem: str | None = None
        self.adopted = self._load_adopted()
        if self.adopted is not None:
            self.keys = self.adopted
            return
        try:
            anchor_bytes = anchor.read_bytes()
        except OSError:
            raise KeyFileError(f"no key set at {anchor}") from None
        self.keys = KeySet.parse(anchor_bytes, source=str(anchor))

    def _load_adopted(self) -> KeySet | None:
        try:
            saved = json.loads(self._saved.read_bytes())
            return KeySet.model_validate(saved["key_set"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            self.problem = f"the saved trust set {self._saved} is unreadable"
            logger.error("saved trust set unreadable")
            return None

    def lose(self) -> None:
        """Trust nothing: releases were applied here, but their trust set is gone."""
        self.problem = self.problem or f"the saved trust set {self._saved} is missing"
        self.problem += (
            ": trusting no key until an operator restores it or resets this target's trust"
        )
        self.keys = KeySet()
        logger.error("trust state lost; no config will be accepted")

    def adopt(self, keys: KeySet) -> None:
        """Trust ``keys`` from now on (written even when unchanged: its presence says the
        anchor has been superseded)."""
        changed = keys != self.keys or self.adopted is None
        write_atomically(self._saved, json.dumps({"key_set": keys.document()}).encode())
        self.keys = self.adopted = keys
        self.problem = None
        if changed:
            kids = ",".join(sorted(k.kid[:8] for k in keys.keys))
            logger.info("trust set adopted kids=%s", kids)

    def public_keys(self, purpose: str) -> list[Ed25519PublicKey]:
        return self.keys.public_keys(purpose)


class ReleaseStore(Generic[R]):
    """Holds the current release; :meth:`commit` is the only way to change it."""

    def __init__(
        self,
        state_dir: Path,
        name: str,
        target: str,
        trust: TrustStore,
        opener: Callable[[str, list[Ed25519PublicKey]], R],
        check: Callable[[R], None] | None = None,
        check_saved: Callable[[R], None] | None = None,
    ) -> None:
        self._path = state_dir / f"{name}.jws"
        self._floor_path = state_dir / f"{name}.floor"
        self._target = target
        self._open = opener
        self._check = check
        # The saved release is checked at start (may wait: nothing is served yet).
        self._check_saved = check_saved or check
        self.trust = trust
        self.current: R | None = None
        # SHA-256 of the current release's compact JWS, as applied (node statements).
        self.current_sha256: str | None = None
        self.floor = self._read_floor()
        if self.floor > 0 and trust.adopted is None:
            trust.lose()

    # --- the floor -----------------------------------------------------------------

    def _read_floor(self) -> int:
        try:
            return max(0, int(self._floor_path.read_text("ascii").strip()))
        except FileNotFoundError:
            return 0
        except (OSError, ValueError):
            # Unreadable means unknown: refusing everything until an operator looks is
            # safer than accepting any old release.
            logger.error("version floor unreadable at %s; refusing releases", self._floor_path)
            return 2**62

    def _raise_floor(self, version: int) -> None:
        if version > self.floor:
            write_atomically(self._floor_path, f"{version}\n".encode())
            self.floor = version

    # --- checking ------------------------------------------------------------------

    def _verify(self, token: str) -> R:
        try:
            release = self._open(token, self.trust.public_keys(CONFIG))
        except EnvelopeError as exc:
            raise ConfigRejected(401, management.BAD_SIGNATURE, str(exc)) from None
        except ValidationError as exc:
            fields = sorted({".".join(str(p) for p in e["loc"]) or "$" for e in exc.errors()})
            raise ConfigRejected(
                400,
                management.INVALID_CONFIG,
                f"release fails the contract at: {', '.join(fields)}",
            ) from None
        if release.target != self._target:
            raise ConfigRejected(
                409,
                management.WRONG_TARGET,
                f"release is for {release.target}, this is {self._target}",
            )
        return release

    def check(self, token: str) -> R:
        """Verify ``token`` fully without applying it (raises :class:`ConfigRejected`)."""
        release = self._verify(token)
        held = max(self.floor, self.current.version if self.current else 0)
        if release.version <= held:
            raise ConfigRejected(
                409,
                management.STALE_VERSION,
                f"release version {release.version} is not newer than {held}",
                current_version=held,
            )
        if release.expired(datetime.now(UTC)):
            raise ConfigRejected(
                422, management.CONFIG_EXPIRED, f"release version {release.version} has expired"
            )
        if self._check is not None:
            self._check(release)
        return release

    def load_saved(self) -> tuple[str, R] | None:
        """The last good release from disk, verified again; None if there is none.

        An expired one is still loaded (health names its version) but is not usable.
        """
        if not self._path.exists():
            return None
        token = self._path.read_text("ascii").strip()
        try:
            release = self._verify(token)
            if release.version < self.floor:
                raise ConfigRejected(
                    409, management.STALE_VERSION, "saved release is below the version floor"
                )
            if self._check_saved is not None:
                self._check_saved(release)
        except ConfigRejected as exc:
            logger.error("saved release refused code=%s; starting without", exc.code)
            return None
        self.current = release
        self.current_sha256 = hashlib.sha256(token.encode("ascii")).hexdigest()
        self._raise_floor(release.version)
        logger.info("release loaded from disk version=%d", release.version)
        return token, release

    def commit(self, token: str, release: R) -> None:
        """Persist and switch to a release that passed :meth:`check` (floor first)."""
        self._raise_floor(release.version)
        write_atomically(self._path, token.encode("ascii"))
        self.current = release
        self.current_sha256 = hashlib.sha256(token.encode("ascii")).hexdigest()
        self.trust.adopt(release.trust)

    # --- state ---------------------------------------------------------------------

    def usable(self, now: datetime | None = None) -> R | None:
        """The current release unless there is none or it has expired."""
        release = self.current
        if release is None or release.expired(now or datetime.now(UTC)):
            return None
        return release

    def problems(self) -> list[str]:
        release = self.current
        if self.trust.problem:
            return [self.trust.problem]
        if release is None:
            return [NO_CONFIG]
        if release.expired(datetime.now(UTC)):
            return [
                f"config version {release.version} expired at "
                f"{release.expires_at.isoformat()}: refusing clients until a new one arrives"
            ]
        return []

    def summary(self) -> dict[str, object]:
        release = self.current
        return {
            "config_version": release.version if release else None,
            "config_expires_at": release.expires_at.isoformat() if release else None,
            "version_floor": self.floor,
            "trusted_kids": sorted(k.kid for k in self.trust.keys.keys),
        }


# --- the node's own ------------------------------------------------------------------


class ModelFileCheck:
    """sha256 of model files, remembered per (path, size, mtime) so a re-push is cheap.

    A pin with a source has its file fetched when it is missing
    (:class:`~data_plane.model_files.ModelFiles`): the hash computed while it streamed
    is remembered, so a multi-GB file is not read twice. A pushed bundle's check
    (:meth:`check_bundle`) never waits for a fetch: it starts the fetches its models
    need and refuses the bundle (503 ``model_fetch_pending``) until they are done.
    """

    def __init__(self, files: ModelFiles) -> None:
        self.files = files
        self._known: dict[tuple[str, int, int], str] = {}

    @staticmethod
    def _key(path: str) -> tuple[str, int, int]:
        st = os.stat(path)
        return (os.path.realpath(path), st.st_size, st.st_mtime_ns)

    def sha256(self, path: str) -> str:
        key = self._key(path)
        if key not in self._known:
            self._known[key] = file_sha256(path)
        return self._known[key]

    def _remember(self, spec: ModelSpec) -> None:
        """Remember the hash of ``spec``'s file, just placed after it hashed right."""
        self._known[self._key(self.files.path(spec))] = spec.sha256

    def check(self, spec: ModelSpec, *, wait: bool = True) -> None:
        """Refuse ``spec`` unless its file hashes to its pin. A missing file pinned by
        source is fetched first, now (``wait``) or in the background, raising
        :class:`ConfigRejected` 503 ``model_fetch_pending`` meanwhile."""
        path = self.files.path(spec)
        try:
            if not wait:
                self.files.start(spec, lambda: self._remember(spec))
            elif self.files.ensure(spec):
                self._remember(spec)
        except ModelFetchPending as exc:
            raise ConfigRejected(
                503, MODEL_FETCH_PENDING, str(exc), retry_after=FETCH_RETRY_AFTER_SECONDS
            ) from None
        except ModelFileMismatch as exc:
            raise ConfigRejected(422, MODEL_HASH_MISMATCH, str(exc)) from None
        except ModelFetchFailed as exc:
            # Worth a retry: the rollout pushes again after a 5xx.
            raise ConfigRejected(503, "model_fetch_failed", str(exc)) from None
        try:
            actual = self.sha256(path)
        except OSError:
            raise ConfigRejected(
                422, "model_unavailable", f"model {spec.name}: file not readable on this node"
            ) from None
        if actual != spec.sha256:
            raise ConfigRejected(
                422,
                MODEL_HASH_MISMATCH,
                f"model {spec.name}: file sha256 is {actual}, the pin says {spec.sha256}",
            )

    def check_bundle(self, bundle: ConfigBundle) -> None:
        """A pushed bundle's served models, without waiting: every missing file's fetch
        is started (all of them at once, not one per push), then the bundle is refused
        while any is on its way. Its staged models are the runtime's, in the background."""
        pending: ConfigRejected | None = None
        for spec in bundle.models:
            try:
                self.check(spec, wait=False)
            except ConfigRejected as exc:
                if exc.code != MODEL_FETCH_PENDING:
                    raise
                pending = pending or exc
        if pending is not None:
            raise pending

    def check_saved_bundle(self, bundle: ConfigBundle) -> None:
        """The saved bundle at start: a missing file is fetched now (within its
        deadline), before the node opens its listeners."""
        for spec in bundle.models:
            self.check(spec)


class ConfigStore(ReleaseStore[ConfigBundle]):
    """A node's config bundle, and the lookups on it."""

    def __init__(
        self, state_dir: Path, trust: TrustStore, node_id: str, models: ModelFiles
    ) -> None:
        from shared.config import open_bundle

        self.files = ModelFileCheck(models)
        # Clients the config being applied no longer places here: their keys stop
        # working before that config lets its new clients in (Runtime.apply_config).
        self.leaving: frozenset[str] = frozenset()
        super().__init__(
            state_dir,
            "config",
            node_id,
            trust,
            open_bundle,
            self.files.check_bundle,
            self.files.check_saved_bundle,
        )

    def places(self, client_id: str) -> bool:
        """Whether the config in force names ``client_id`` (placed on this node's pool)."""
        current = self.current
        return current is not None and any(c.id == client_id for c in current.clients)

    def admits(self, client_id: str) -> bool:
        """Whether ``client_id`` may start work here now: placed, and not leaving."""
        return client_id not in self.leaving and self.places(client_id)

    def summary(self) -> dict[str, object]:
        """The release's summary and the pool the node serves (its clients are in it)."""
        pool = self.current.pool if self.current else None
        return {**super().summary(), "pool": pool.model_dump() if pool else None}

    def authenticate(self, key: str, now_ts: float) -> str | None:
        """The client id owning ``key``, or None (unknown, malformed, expired, leaving)."""
        client_id = self._owner(key, now_ts)
        return None if client_id in self.leaving else client_id

    def _owner(self, key: str, now_ts: float) -> str | None:
        bundle = self.usable(datetime.fromtimestamp(now_ts, UTC))
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
