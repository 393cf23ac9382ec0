"""Run a node: the runtime, then the client listener and the management listener.

Both uvicorn servers share one event loop and one runtime. SIGINT/SIGTERM stop both:
the listeners stop accepting, streams in flight get a grace period to finish, then the
engines close: the generations still running end (their streams get an error event and
close, their turns are accounted) and the models are freed. Last, every session still
open ends, its usage record stored.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

from pydantic import ValidationError

from data_plane.app import create_app, create_management_app
from data_plane.logs import configure_logging
from data_plane.runtime import Runtime
from data_plane.serving import Server, bound_port, make_server
from data_plane.settings import Settings
from data_plane.tls import require_tls, uvicorn_tls
from data_plane.tracing import instrument
from shared.keys import KeyFileError
from shared.metrics import MetricsTokenError, read_token, scrape_app
from shared.pki import CertificateError
from shared.settings import settings_problems
from shared.tracing import configure as configure_tracing

logger = logging.getLogger(__name__)

GRACE_SECONDS = 10


def _server(app: Any, host: str, port: int, **tls: Any) -> Server:
    # A backstop only: serve() ends what is left after GRACE_SECONDS itself.
    return make_server(app, host, port, timeout_graceful_shutdown=GRACE_SECONDS + 20, **tls)


async def serve(settings: Settings) -> None:
    runtime = Runtime(settings)
    listen = settings.listen
    require_tls(settings.environment, listen.management_host, runtime.tls)
    if settings.metrics.token_file is not None:
        require_tls(settings.environment, settings.metrics.host, runtime.tls)
    tracer_provider = configure_tracing(settings.tracing, "sanctum-node")
    await runtime.start()
    api_app: Any = create_app(runtime=runtime)
    mgmt_app: Any = create_management_app(runtime)
    if tracer_provider is not None:
        api_app = instrument(api_app, tracer_provider, client_facing=True)
        mgmt_app = instrument(mgmt_app, tracer_provider, client_facing=False)
    api = _server(api_app, listen.api_host, listen.api_port)
    mgmt = _server(
        mgmt_app,
        listen.management_host,
        listen.management_port,
        **uvicorn_tls(runtime.tls),
    )
    servers = [api, mgmt]
    metrics = settings.metrics
    if metrics.token_file is not None:
        # The scrape endpoint: on the management side, a listener of its own (the
        # management one admits the control plane only), TLS with the node's management
        # certificate once enrolled (no client certificate asked), a bearer token always.
        scrape = scrape_app(runtime.metrics.registry, read_token(metrics.token_file))
        tls = uvicorn_tls(runtime.tls, client_certificate=False)
        servers.append(_server(scrape, metrics.host, metrics.port, **tls))
    scheme = "https" if runtime.tls.enrolled else "http"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    try:
        while not all(server.started for server in servers):
            if any(t.done() for t in tasks):  # a listener failed to bind
                break
            await asyncio.sleep(0.05)
        if all(server.started for server in servers):
            scraped = (
                f" metrics={scheme}://{metrics.host}:{bound_port(servers[2])}/metrics"
                if len(servers) > 2
                else ""
            )
            print(
                f"SANCTUM_DP_READY api=http://{listen.api_host}:{bound_port(api)} "
                f"management={scheme}://{listen.management_host}:{bound_port(mgmt)}"
                f"{scraped}",
                flush=True,
            )
            logger.info("node ready node=%s", settings.node_id)
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
    finally:
        for server in servers:
            server.should_exit = True
        _, running = await asyncio.wait(tasks, timeout=GRACE_SECONDS)
        if running:
            # Streams still in flight after the grace period: unloading the models ends
            # their generations (each stream gets an error event and its turn is
            # accounted), so the listeners can close; then the sessions end.
            logger.info("ending the generations still in flight")
            await runtime.engines.aclose()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runtime.stop()
        if tracer_provider is not None:
            tracer_provider.shutdown()  # exports the spans still batched
        logger.info("node stopped node=%s", settings.node_id)
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
    if failed or not all(server.started for server in servers):
        raise SystemExit(1)


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as exc:
        # Names the setting and the rule; settings hold paths and ids, never content.
        print(f"error: invalid settings: {settings_problems(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except (KeyFileError, CertificateError, MetricsTokenError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
