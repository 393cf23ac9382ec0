"""The node's components, built once and shared by both listeners.

``Runtime`` owns the config store, one engine per pinned model, the sessions, the
usage outbox with the node's signing key, and the retrieval components (embedder,
knowledge-base index). It is started before the listeners open and stopped after they
close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from data_plane.backbone import NodeBackbone
from data_plane.config_store import ConfigRejected, ConfigStore, TrustStore
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

# How long a retired model's turns in flight get to be accounted before their sessions end.
RETIRE_GRACE_SECONDS = 30.0
# How often changed quota counts are written to disk.
COUNTERS_FLUSH_SECONDS = 2.0


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
    )


class EnginePool:
    """One loaded engine per pinned model, keyed by the pin's name and file hash."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._engines: dict[tuple[str, str], Engine] = {}
        self._closed = False

    def get(self, spec: ModelSpec) -> Engine | None:
        return self._engines.get((spec.name, spec.sha256))

    def loaded(self) -> list[Engine]:
        return list(self._engines.values())

    async def load(self, spec: ModelSpec) -> Engine:
        key = (spec.name, spec.sha256)
        if key not in self._engines:
            if self._closed:
                raise EngineError("the node is shutting down")
            # Loading takes a while; it runs off the event loop.
            started = time.monotonic()
            engine = await LlamaEngine.load(engine_config(spec, self._settings))
            if self._closed:  # the pool closed while it loaded
                await engine.aclose()
                raise EngineError("the node is shutting down")
            self._engines[key] = engine
            logger.info("model loaded name=%s seconds=%.2f", spec.name, time.monotonic() - started)
        return self._engines[key]

    def retired(self, bundle: ConfigBundle) -> list[Engine]:
        """Engines whose pin is not in ``bundle`` any more (removed from the pool)."""
        keep = {(m.name, m.sha256) for m in bundle.models}
        gone = [k for k in self._engines if k not in keep]
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
        self.model_files = ModelFiles(settings.models_path, settings.model_fetch_timeout_seconds)
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
        self.usage = UsageRecorder(
            settings.node_id, self.node_key, UsageOutbox(settings.outbox_dir, settings.outbox)
        )
        self.engines = EnginePool(settings)
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
        self._apply_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

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
        self._tasks = [
            asyncio.create_task(self._sweep(), name="session-sweeper"),
            asyncio.create_task(self._compact(), name="outbox-compactor"),
            asyncio.create_task(self._flush_counters(), name="counters-flusher"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
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
            # Checking hashes each pinned file it has not seen, and fetches those pinned
            # by source that are missing: gigabytes for a real model, so on a worker
            # thread, never on the loop every stream is served from.
            bundle = await asyncio.to_thread(self.config.check, token)
            if bundle.tls is not None:
                try:
                    self.tls.check(bundle.tls)
                except (CertificateError, KeyFileError) as exc:
                    raise ConfigRejected(422, CERTIFICATE_INVALID, str(exc)) from None
            await self.backbone.apply(bundle, self.backbone.check(bundle))
            try:
                for spec in bundle.models:
                    await self.engines.load(spec)
            except Exception as exc:
                logger.error("model load failed: %s", type(exc).__name__)
                raise ConfigRejected(
                    422, "model_unavailable", "a pinned model failed to load on this node"
                ) from None
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
            for engine in self.engines.retired(bundle):
                await self._retire(engine)
            await self._drop_unplaced(placed)
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

    async def _retire(self, engine: Engine) -> None:
        """Unload a model the new bundle no longer pins, and end its sessions.

        The engine closes first: generations still running end (each stream gets an error
        event) and their turns are accounted as their handlers finish; then the sessions
        end, each with its usage record stored.
        """
        await engine.aclose()
        await self._end_sessions(self.sessions.by_engine(engine))

    async def _end_sessions(self, sessions: list[Session]) -> None:
        """End ``sessions`` once their turns in flight are accounted (or after a grace)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RETIRE_GRACE_SECONDS):
                for session in sessions:
                    async with session.busy:  # its turn in flight has been accounted
                        pass
        await self.sessions.end_all("shutdown", sessions)

    def engine_for(self, spec: ModelSpec) -> Engine | None:
        return self.engines.get(spec)

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
