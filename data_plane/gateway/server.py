"""Run the gateway agent: apply the saved config, then serve the management listener
(and the metrics listener when SANCTUM_GW_METRICS__TOKEN_FILE is set).

Prints ``SANCTUM_GW_READY management=http://HOST:PORT`` once listening, for supervisors
and tests to wait on. SIGINT/SIGTERM stop the listener; nginx and the WireGuard
interface stay up (they belong to the machine, not to the agent).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

from pydantic import ValidationError

from data_plane.gateway.agent import GatewayAgent
from data_plane.gateway.app import create_app
from data_plane.gateway.metrics import GatewayMetrics
from data_plane.gateway.settings import GatewaySettings
from data_plane.logs import configure_logging
from data_plane.serving import bound_port, make_server
from data_plane.tls import require_tls, uvicorn_tls
from data_plane.tracing import instrument
from shared.metrics import MetricsTokenError, read_token, scrape_app
from shared.settings import settings_problems
from shared.tracing import configure as configure_tracing

logger = logging.getLogger(__name__)


def _check_install(settings: GatewaySettings) -> None:
    """Fail at start, with the setting to fix, rather than at the first config."""
    if not settings.nginx.template.is_file():
        raise SystemExit(
            f"nginx template not found at {settings.nginx.template}: "
            "set SANCTUM_GW_NGINX__TEMPLATE to infra/nginx/gateway.conf.template"
        )
    script = settings.firewall.script
    if script is not None and not script.is_file():
        raise SystemExit(
            f"firewall script not found at {script}: "
            "set SANCTUM_GW_FIREWALL__SCRIPT to infra/scripts/gateway-firewall.sh"
        )


async def serve(settings: GatewaySettings) -> None:
    _check_install(settings)
    agent = GatewayAgent(settings)
    require_tls(settings.environment, settings.listen.host, agent.tls)
    if settings.metrics.token_file is not None:
        require_tls(settings.environment, settings.metrics.host, agent.tls)
    tracer_provider = configure_tracing(settings.tracing, "sanctum-gateway")
    await agent.start()
    background = [asyncio.create_task(agent.watch_expiry(), name="config-expiry")]
    app: Any = create_app(agent)
    if tracer_provider is not None:
        # The agent's only listener is the management one: the control plane calls it.
        app = instrument(app, tracer_provider, client_facing=False)
    servers = [
        make_server(app, settings.listen.host, settings.listen.port, **uvicorn_tls(agent.tls))
    ]
    metrics = settings.metrics
    if metrics.token_file is not None:
        # The scrape endpoint: a listener of its own on the management side (the agent's
        # admits the control plane only), a bearer token always (shared.metrics).
        gauges = GatewayMetrics(settings.nginx_log_dir)
        scrape = scrape_app(gauges.registry, read_token(metrics.token_file))
        tls = uvicorn_tls(agent.tls, client_certificate=False)
        servers.append(make_server(scrape, metrics.host, metrics.port, **tls))
        refresh = gauges.keep_fresh(agent, metrics.refresh_seconds)
        background.append(asyncio.create_task(refresh, name="metrics"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    while not all(s.started for s in servers) and not any(t.done() for t in tasks):
        await asyncio.sleep(0.05)
    if all(s.started for s in servers):
        scheme = "https" if agent.tls.enrolled else "http"
        urls = [f"management={scheme}://{settings.listen.host}:{bound_port(servers[0])}"]
        if len(servers) > 1:
            urls.append(f"metrics={scheme}://{metrics.host}:{bound_port(servers[1])}/metrics")
        print(f"SANCTUM_GW_READY {' '.join(urls)}", flush=True)
        logger.info("gateway agent ready gateway=%s", settings.name)
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
    for s in servers:
        s.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    for job in background:
        job.cancel()
    if tracer_provider is not None:
        tracer_provider.shutdown()  # exports the spans still batched
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
    if failed or not all(s.started for s in servers):
        raise SystemExit(1)


async def render_nginx(settings: GatewaySettings) -> None:
    """Write nginx's config from the saved gateway config (or nobody-allowed), checked.

    For a service manager that starts nginx itself before the agent (ExecStartPre).
    """
    agent = GatewayAgent(settings)
    saved = agent.store.load_saved()
    text = agent.nginx.render(saved[1] if saved else None)
    await agent.nginx.check(text)
    path = agent.nginx.config_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, "utf-8")
    print(f"nginx config written to {path}")


def main(command: str) -> None:
    try:
        settings = GatewaySettings()
    except ValidationError as exc:
        # Names the setting and the rule, never a value.
        print(f"error: invalid settings: {settings_problems(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level)
    if command == "render-nginx":
        asyncio.run(render_nginx(settings))
        return
    try:
        asyncio.run(serve(settings))
    except MetricsTokenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
