"""The node's components, built once and shared by both listeners.

``Runtime`` owns the config store, one engine per pinned model, the sessions, the
usage outbox with the node's signing key, and the retrieval components (embedder,
knowledge-base index). It is started before the listeners open and stopped after they
close.

Model versions change without a gap (docs/operations.md, "Upgrading a model"). A
bundle's ``staged`` models are new versions of models it serves. They are prepared by a
background task the apply starts (never under the apply lock, so a slow storage link
delays no later push): each file is fetched if need be and verified off the event loop
and, if the node has room (``ENGINE__MAX_LOADED_MODELS``), loaded; health reports each
as ``fetching`` (its progress is in ``model_fetches``) or ``checking``, then ``loaded``,
``ready`` (verified, no room to load it beside the old one) or ``failed``. Staged
engines serve no one. When a bundle then serves the new version:

- with its engine loaded (or room to load it), the switch is instant: the config in
  force names the new engine, so new requests go to it; the old engine *drains* (no new
  turn on its sessions; turns in flight finish, within ``SESSIONS__DRAIN_GRACE_SECONDS``;
  its sessions end with their records) and unloads;
- without room, the old engine drains and unloads first, then the new one loads, and
  only then is the bundle committed. Meanwhile a request for that model gets 503
  ``model_switching`` with ``Retry-After`` (the OpenAI SDK retries it by itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from data_plane.attestation import Attestor
from data_plane.backbone import NodeBackbone
from data_plane.config_store import (
    MODEL_HASH_MISMATCH,
    ConfigRejected,
    ConfigStore,
    TrustStore,
)
from data_plane.engine.base import ClientCaps, Engine, EngineError, ModelInfo
from data_plane.engine.llama import EngineConfig, LlamaEngine
from data_plane.fair_queue import FairExecutor
from data_plane.metrics import EngineState, NodeMetrics, NodeState
from data_plane.model_files import ModelFiles, model_file_path
from data_plane.outbox import UsageOutbox
from data_plane.rag import Retrieval
from data_plane.rate_limits import RateLimiter
from data_plane.sessions import Session, SessionStore
from data_plane.settings import Settings
from data_plane.tls import ManagementTLS
from data_plane.usage import UsageRecorder
from shared.config import ClientSpec, ConfigBundle, ModelSpec
from shared.keys import NODE, KeyFileError, ensure_key_pair, load_private_key
from shared.management import CERTIFICATE_INVALID
from shared.pki import CertificateError
from shared.signed_request import ReplayGuard, SignedRequestVerifier
from shared.trust import MANAGEMENT

logger = logging.getLogger(__name__)

# How often changed quota counts are written to disk.
COUNTERS_FLUSH_SECONDS = 2.0
# What a request for a model that is switching versions is told to wait (Retry-After).
SWITCH_RETRY_AFTER_SECONDS = 2

StagedState = Literal["fetching", "checking", "loaded", "ready", "failed"]
# States a staged model keeps when a later bundle stages it again.
PREPARED: tuple[StagedState, ...] = ("loaded", "ready")


@dataclass(frozen=True)
class StagedModel:
    """A new version staged to replace a served model, as the node has prepared it."""

    spec: ModelSpec
    state: StagedState
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "version": self.spec.version,
            "sha256": self.spec.sha256,
            "state": self.state,
            "reason": self.reason,
        }


def engine_config(spec: ModelSpec, settings: Settings) -> EngineConfig:
    """How to load a pinned model: the pin's file, the node's engine settings."""
    es = settings.engine
    return EngineConfig(
        path=model_file_path(spec, settings.models_path),
        info=ModelInfo(
            name=spec.name,
            version=spec.version,
            sha256=spec.sha256,
            context_size=es.context_size or spec.context_size,
        ),
        chat_template=spec.chat_template,
        threads=es.threads,
        n_gpu_layers=es.n_gpu_layers if spec.gpu_layers is None else spec.gpu_layers,
        max_sequences=es.max_sequences,
        batch_size=es.batch_size,
        prefill_chunk=es.prefill_chunk,
        max_queue=es.max_queue,
        flash_attn=es.flash_attn,
        max_parked_bytes=es.max_parked_bytes,
        time_slice_tokens=es.time_slice_tokens,
        client_max_running=es.client_max_running,
        client_max_queued=es.client_max_queued,
        client_max_parked_bytes=es.client_max_parked_bytes,
        speculation=es.speculation,
        max_draft=es.speculation_max_draft,
    )


class ModelFileChanged(EngineError):
    """The bytes llama.cpp loaded are not the pinned ones."""


def _load_from_one_file(config: EngineConfig) -> tuple[LlamaEngine, str]:
    """In a worker thread: open the model file, load it through that descriptor, hash
    the same inode, close the descriptor (see ``EnginePool._load_mapped``)."""
    fd = os.open(config.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        engine = LlamaEngine(dataclasses.replace(config, path=f"/proc/self/fd/{fd}"))
        try:
            with open(f"/proc/self/fd/{fd}", "rb") as f:
                mapped = hashlib.file_digest(f, "sha256").hexdigest()
        except BaseException:
            asyncio.run(engine.aclose())  # this worker thread runs no event loop
            raise
    finally:
        os.close(fd)
    return engine, mapped


def _key(spec: ModelSpec) -> tuple[str, str]:
    return (spec.name, spec.sha256)


class EnginePool:
    """One loaded engine per pinned (or staged) model, keyed by name and file hash."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._engines: dict[tuple[str, str], Engine] = {}
        self._closed = False
        self.max_loaded = settings.engine.max_loaded_models
        # sha256 of each loaded engine's file as llama.cpp mapped it (node statements).
        self.mapped: dict[tuple[str, str], str] = {}

    def get(self, spec: ModelSpec) -> Engine | None:
        return self._engines.get(_key(spec))

    def loaded(self) -> list[Engine]:
        return list(self._engines.values())

    def has_room(self, more: int = 1) -> bool:
        """Whether ``more`` engines fit beside those loaded (``MAX_LOADED_MODELS``)."""
        return self.max_loaded is None or len(self._engines) + more <= self.max_loaded

    async def load(self, spec: ModelSpec) -> Engine:
        key = (spec.name, spec.sha256)
        if key not in self._engines:
            if self._closed:
                raise EngineError("the node is shutting down")
            # Loading takes a while; it runs off the event loop.
            started = time.monotonic()
            engine, mapped = await self._load_mapped(spec)
            if self._closed:  # the pool closed while it loaded
                await engine.aclose()
                raise EngineError("the node is shutting down")
            self._engines[key] = engine
            self.mapped[key] = mapped
            logger.info("model loaded name=%s seconds=%.2f", spec.name, time.monotonic() - started)
        return self._engines[key]

    async def _load_mapped(self, spec: ModelSpec) -> tuple[Engine, str]:
        """Load ``spec`` from one open file and hash that same file after the load.

        The config's check hashed the file by its path; llama.cpp opening the path again
        could map other bytes (a file replaced or changed in between). So llama.cpp is
        given this process's open descriptor (``/proc/self/fd/N``: the same inode, whatever
        the path names now) and, once it has mapped it, the same inode is hashed again: an
        engine whose mapped bytes are not the pinned ones is closed and refused
        (:class:`ModelFileChanged`), and what node statements claim is this hash. Open,
        load, hash and close run in one worker thread, so a cancelled caller can't close
        the descriptor under llama.cpp.
        """
        config = engine_config(spec, self._settings)
        engine, mapped = await asyncio.to_thread(_load_from_one_file, config)
        if mapped != spec.sha256:
            await engine.aclose()
            raise ModelFileChanged(
                f"model {spec.name}: the bytes loaded hash to {mapped}, the pin says "
                f"{spec.sha256}; the file changed after it was checked"
            )
        return engine, mapped

    def retired(self, keep: Iterable[ModelSpec]) -> list[Engine]:
        """Take out the engines of models not in ``keep`` (unpinned, or an old version)."""
        kept = {_key(m) for m in keep}
        gone = [k for k in self._engines if k not in kept]
        for k in gone:
            self.mapped.pop(k, None)
        return [self._engines.pop(k) for k in gone]

    async def aclose(self) -> None:
        self._closed = True
        engines = list(self._engines.values())
        self._engines.clear()
        for engine in engines:
            await engine.aclose()


def node_signing_key(settings: Settings) -> Ed25519PrivateKey:
    """The key this node signs usage records with.

    An explicit ``node_private_key`` must exist (production requires one: the settings
    refuse to load without it); in development the default ``DATA_DIR/keys/node.key`` is
    made on first start.
    """
    if settings.node_private_key is not None:
        return load_private_key(settings.node_private_key)
    return ensure_key_pair(settings.keys_dir, NODE)


class Runtime:
    """Everything a request handler needs, with a start and a stop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        state = settings.data_dir / "state"
        trust = TrustStore(settings.trust_keys_path, state / "trust.json")
        self.model_files = ModelFiles(
            settings.models_path,
            settings.model_fetch_timeout_seconds,
            settings.model_fetch_min_bytes_per_second,
        )
        self.config = ConfigStore(state, trust, settings.node_id, self.model_files)
        self.backbone = NodeBackbone(settings)
        # Every management call is a request signed for this node; ids seen survive a
        # restart, so a replay stays refused.
        self.requests = SignedRequestVerifier(
            lambda: trust.public_keys(MANAGEMENT),
            settings.node_id,
            ReplayGuard(state / "replay.log"),
        )
        self.node_key = node_signing_key(settings)
        self.tls = ManagementTLS(settings.tls_path, settings.node_id)
        self.engines = EnginePool(settings)
        self.attestor = Attestor(
            settings, self.node_key, self.config, self.tls, self.engines.mapped, self.engines.loaded
        )
        self.usage = UsageRecorder(
            settings.node_id,
            self.node_key,
            UsageOutbox(settings.outbox_dir, settings.outbox),
            self.attestor.record_fields,
        )
        self.sessions = SessionStore(settings.node_id, max_open=settings.sessions.max_open)
        self.sessions.admits = self.config.admits
        self.sessions.add_end_hook(self.usage.on_session_end)
        self.retrieval = Retrieval(settings) if settings.retrieval.enabled else None
        limits = settings.limits
        # Chat templates and tokenizing: off the event loop, client by client.
        self.prompt_work = FairExecutor(
            "prompt builder",
            workers=limits.prompt_workers,
            max_per_client=limits.prompt_queue_per_client,
            max_total=limits.prompt_queue,
        )
        self.rate_limits = RateLimiter(settings.data_dir / "state" / "usage-counters.json")
        self.metrics = NodeMetrics(per_client=settings.metrics.per_client)
        self.metrics.watch(self._metrics_state)
        self.started_at = time.time()
        # Staged models by name, as last prepared (reported in health).
        self.staged: dict[str, StagedModel] = {}
        # Engines on their way out: no new turn starts on them.
        self._draining: set[Engine] = set()
        # Models whose engine is swapped without room for both: requests wait (503).
        self._switching: frozenset[str] = frozenset()
        self._apply_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        # Preparing the staged models of the config in force (fetch, verify, load).
        self._staging: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.usage.outbox.open()  # before any session can end
        if self.retrieval is not None:
            await self.retrieval.start()
        saved = self.config.load_saved()
        if saved is not None:
            try:
                await self.backbone.apply(saved[1], self.backbone.check(saved[1]))
            except ConfigRejected as exc:
                logger.error("backbone not restored: %s", exc.message)
            for spec in saved[1].models:
                await self.engines.load(spec)
            self._stage(saved[1].staged)
        self._tasks = [
            asyncio.create_task(self._sweep(), name="session-sweeper"),
            asyncio.create_task(self._compact(), name="outbox-compactor"),
            asyncio.create_task(self._flush_counters(), name="counters-flusher"),
        ]

    async def stop(self) -> None:
        self.model_files.close()  # fetches running are abandoned
        for task in [*self._tasks, *([self._staging] if self._staging else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.sessions.end_all("shutdown")  # each one's record is stored first
        await self.usage.outbox.close()
        await self.engines.aclose()
        await asyncio.to_thread(self.prompt_work.close)
        await asyncio.to_thread(self.rate_limits.flush)
        if self.retrieval is not None:
            await self.retrieval.stop()

    async def apply_config(self, token: str) -> ConfigBundle:
        """Verify, load what the bundle pins, then switch; the old config serves until then."""
        async with self._apply_lock:
            # Checking hashes each pinned file it has not seen (gigabytes for a real
            # model, on local disk): on a worker thread, never on the loop every stream
            # is served from. A served model's file missing from the models dir is not
            # waited for: its fetch starts in the background and the bundle is refused
            # (503 model_fetch_pending) until it is in place, so the storage link never
            # holds this lock and the pushes after this one are not kept waiting.
            bundle = await asyncio.to_thread(self.config.check, token)
            if bundle.tls is not None:
                try:
                    self.tls.check(bundle.tls)
                except (CertificateError, KeyFileError) as exc:
                    raise ConfigRejected(422, CERTIFICATE_INVALID, str(exc)) from None
            limit = self.engines.max_loaded
            if limit is not None and len(bundle.models) > limit:
                raise ConfigRejected(
                    422,
                    "model_no_room",
                    f"the config pins {len(bundle.models)} models; this node holds at most "
                    f"{limit} (SANCTUM_DP_ENGINE__MAX_LOADED_MODELS)",
                )
            await self.backbone.apply(bundle, self.backbone.check(bundle))
            await self._load_models(bundle)
            placed = {c.id for c in bundle.clients}
            held = self.config.current.clients if self.config.current else ()
            try:
                # A client this config no longer places here (moved to another pool,
                # disabled): its key stops working and its sessions end *before* the
                # config lets anyone new in, so on a dedicated pool changing hands no
                # turn of the client leaving runs beside one of the client arriving.
                self.config.leaving = frozenset(c.id for c in held) - placed
                await self._end_sessions(self._sessions_of(self.config.leaving))
                self.config.commit(token, bundle)
            finally:
                self.config.leaving = frozenset()
            self.tls.install(bundle.tls)
            served = {m.name for m in bundle.models}
            for engine in self.engines.retired((*bundle.models, *bundle.staged)):
                await self._retire(engine, drain=engine.info.name in served)
            await self._drop_unplaced(placed)
            self._stage(bundle.staged)
            return bundle

    def not_ready(self) -> str | None:
        """Why the node does not serve clients now (``no_config``, ``config_unusable``:
        untrusted or expired, ``models_loading``), or None: it does."""
        if self.config.current is None:
            return "no_config"
        bundle = self.config.usable()
        if bundle is None or self.config.problems():
            return "config_unusable"
        if any(self.engines.get(spec) is None for spec in bundle.models):
            return "models_loading"
        return None

    def _metrics_state(self) -> NodeState:
        release = self.config.current
        engines = []
        for engine in self.engines.loaded():
            stats, info = engine.stats(), engine.info
            engines.append(
                EngineState(
                    name=info.name,
                    version=info.version,
                    sha256=info.sha256,
                    slots=stats.slots,
                    slots_busy=stats.slots_busy,
                    running=sum(stats.running.values()),
                    waiting=sum(stats.waiting.values()),
                    parked_sequences=stats.parked_sequences,
                    parked_bytes=stats.parked_bytes,
                )
            )
        retrieval = self.retrieval
        queues = {"prompt_builder": sum(self.prompt_work.waiting().values())}
        if retrieval is not None:
            queues["embedder"] = sum(retrieval.embedder.waiting().values())
            queues["document_parser"] = sum(retrieval.parser.waiting().values()) + sum(
                retrieval.ingest_parser.waiting().values()
            )
        return NodeState(
            node=self.settings.node_id,
            ready=self.not_ready() is None,
            config_version=release.version if release else None,
            config_expires_at=release.expires_at.timestamp() if release else None,
            sessions_open=len(self.sessions),
            outbox_pending=self.usage.outbox.pending_count,
            queues=queues,
            engines=engines,
        )

    async def _load_models(self, bundle: ConfigBundle) -> None:
        """Load what ``bundle`` serves and is not loaded, before it is committed.

        With room, beside the engines that serve now (they go once it is committed).
        Without, the engines it no longer serves drain and unload first, their models
        answering ``model_switching`` until the new ones are loaded; if one fails to
        load, what served before is loaded again (best effort) and the bundle refused.
        """
        missing = [m for m in bundle.models if self.engines.get(m) is None]
        if not missing:
            return
        names = frozenset(m.name for m in missing)
        making_room = not self.engines.has_room(len(missing))
        try:
            if making_room:
                self._switching = names
                leaving = self.engines.retired(bundle.models)
                logger.info(
                    "no room to load beside: draining models=%d to load models=%d",
                    len(leaving),
                    len(missing),
                )
                for engine in leaving:
                    await self._retire(engine, drain=True)
            for spec in missing:
                await self.engines.load(spec)
        except Exception as exc:
            logger.error("model load failed: %s", type(exc).__name__)
            if making_room and self.config.current is not None:
                await self._reload(self.config.current.models)
            if isinstance(exc, ModelFileChanged):
                raise ConfigRejected(422, MODEL_HASH_MISMATCH, str(exc)) from None
            raise ConfigRejected(
                422, "model_unavailable", "a pinned model failed to load on this node"
            ) from None
        finally:
            self._switching = frozenset()

    async def _reload(self, specs: Iterable[ModelSpec]) -> None:
        """Load ``specs`` again after a switch that failed (what it can: logged if not)."""
        for spec in specs:
            try:
                await self.engines.load(spec)
            except Exception as exc:
                logger.error("model reload failed name=%s: %s", spec.name, type(exc).__name__)

    def _stage(self, specs: Iterable[ModelSpec]) -> None:
        """Start preparing the new versions a bundle stages, in the background; health
        shows each one's state from now on. A preparation still running for an earlier
        bundle is abandoned (a fetch it started goes on, and its file is reused)."""
        if self._staging is not None:
            self._staging.cancel()
        before = self.staged
        staged: dict[str, StagedModel] = {}
        for spec in specs:
            kept = before.get(spec.name)
            if kept is not None and kept.spec == spec and kept.state in PREPARED:
                staged[spec.name] = kept
            else:
                fetching = self.model_files.missing(spec)
                staged[spec.name] = StagedModel(spec, "fetching" if fetching else "checking")
        self.staged = staged
        self._staging = (
            asyncio.create_task(self._prepare_staged(tuple(staged)), name="staging")
            if staged
            else None
        )

    async def _prepare_staged(self, names: tuple[str, ...]) -> None:
        """Fetch and verify each staged file off the event loop and without the apply
        lock (the same check a served model's file passes, with the fetch's deadline),
        then load it if there is room. A staged model that fails is reported with its
        reason; the bundle stands.

        Loading takes the apply lock: it changes the engine pool, which an apply reads
        and changes too (room, retired engines), and it reads the model from local disk
        only, so the storage link can't stretch it.
        """
        for name in names:
            spec = self.staged[name].spec
            try:
                await asyncio.to_thread(self.config.files.check, spec)
            except ConfigRejected as exc:
                self.staged[name] = StagedModel(spec, "failed", exc.message)
                logger.info("model staged name=%s state=failed code=%s", spec.name, exc.code)
                continue
            except Exception as exc:  # a bug: reported on the model, not a lost task
                logger.error("staged model check failed: %s", type(exc).__name__)
                self.staged[name] = StagedModel(spec, "failed", "the file could not be checked")
                continue
            async with self._apply_lock:  # cancelled here if a newer bundle applied
                state: StagedState = "ready"
                if self.engines.get(spec) is None and self.engines.has_room():
                    try:
                        await self.engines.load(spec)
                    except Exception as exc:
                        logger.error("staged model load failed: %s", type(exc).__name__)
                        self.staged[name] = StagedModel(
                            spec, "failed", "the model failed to load on this node"
                        )
                        continue
                if self.engines.get(spec) is not None:
                    state = "loaded"
                self.staged[name] = StagedModel(spec, state)
            logger.info("model staged name=%s state=%s", spec.name, state)

    def serving(self) -> list[Engine]:
        """The engines of the models the config in force serves (not staged ones)."""
        current = self.config.current
        if current is None:
            return []
        engines = (self.engines.get(m) for m in current.models)
        return [e for e in engines if e is not None]

    def switching(self, model: str) -> bool:
        """Whether ``model`` is between versions (no room for both): retry shortly."""
        return model in self._switching

    def draining(self, engine: Engine) -> bool:
        """Whether ``engine`` is on its way out: no new turn may start on it."""
        return engine in self._draining

    def _sessions_of(self, clients: Collection[str]) -> list[Session]:
        return [s for s in self.sessions.open_sessions() if s.client_id in clients]

    async def _drop_unplaced(self, placed: set[str]) -> None:
        """What clients no longer placed here left: a session opened in the instant
        before their key stopped working, their knowledge bases (load them again on
        their new pool's nodes: docs/rag.md)."""
        await self._end_sessions(
            [s for s in self.sessions.open_sessions() if s.client_id not in placed]
        )
        if self.retrieval is None:
            return
        for kb in await self.retrieval.store.knowledge_bases():
            if kb.client_id not in placed:
                await self.retrieval.store.delete_knowledge_base(kb.client_id, kb.name)
                logger.info("knowledge base dropped: client %s is not placed here", kb.client_id)

    async def _retire(self, engine: Engine, *, drain: bool) -> None:
        """Unload an engine the new bundle no longer serves, and end its sessions.

        ``drain`` (a version of a model that goes on being served): no new turn starts
        on it, turns in flight finish (within the grace), then its sessions end, each
        with its usage record stored, and it unloads. Otherwise (the model is unpinned)
        the engine closes first: generations still running end (each stream gets an
        error event) and are accounted as their handlers finish; then the sessions end.
        """
        if not drain:
            await engine.aclose()
            await self._end_sessions(self.sessions.by_engine(engine))
            return
        self._draining.add(engine)
        try:
            await self._end_sessions(self.sessions.by_engine(engine))
            await engine.aclose()
            # A session opened by a request that found the engine just before it began
            # to drain: it ran nothing here, and ends too.
            await self.sessions.end_all("shutdown", self.sessions.by_engine(engine))
        finally:
            self._draining.discard(engine)

    async def _end_sessions(self, sessions: list[Session]) -> None:
        """End ``sessions`` once their turns in flight are accounted (or after a grace)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.sessions.drain_grace_seconds):
                for session in sessions:
                    async with session.busy:  # its turn in flight has been accounted
                        pass
        await self.sessions.end_all("shutdown", sessions)

    def engine_for(self, spec: ModelSpec) -> Engine | None:
        """The engine that serves ``spec`` now (None while it is loading or draining)."""
        engine = self.engines.get(spec)
        return None if engine is None or engine in self._draining else engine

    @staticmethod
    def caps_for(client: ClientSpec, engine: Engine) -> ClientCaps:
        """The client's caps on ``engine``: its own from the config, else the node's."""
        limits, default = client.limits, engine.default_caps
        return ClientCaps(
            max_running=limits.max_running or default.max_running,
            max_queued=default.max_queued if limits.max_queued is None else limits.max_queued,
            max_parked_bytes=default.max_parked_bytes
            if limits.max_parked_bytes is None
            else limits.max_parked_bytes,
        )

    async def _sweep(self) -> None:
        interval = self.settings.sessions.sweep_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                expired = await self.sessions.expire_idle()
                if expired:
                    logger.info("sessions expired count=%d", expired)
            except Exception:
                logger.exception("session sweep failed")

    async def _flush_counters(self) -> None:
        while True:
            await asyncio.sleep(COUNTERS_FLUSH_SECONDS)
            try:
                await asyncio.to_thread(self.rate_limits.flush)
            except Exception:
                logger.exception("usage counters flush failed")

    async def _compact(self) -> None:
        """Drop outbox segments acknowledged and past the receipt retention."""
        interval = self.settings.outbox.compact_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await self.usage.outbox.compact()
            except Exception:
                logger.exception("outbox compaction failed")
