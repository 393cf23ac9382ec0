"""Run the gateway agent: apply the saved config, then serve the management listener.

Prints ``SANCTUM_GW_READY management=http://HOST:PORT`` once listening, for supervisors
and tests to wait on. SIGINT/SIGTERM stop the listener; nginx and the WireGuard
interface stay up (they belong to the machine, not to the agent).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvicorn
from pydantic import ValidationError

from data_plane.gateway.agent import GatewayAgent
from data_plane.gateway.app import create_app
from data_plane.gateway.settings import GatewaySettings
from data_plane.logs import configure_logging
from data_plane.tls import require_tls, uvicorn_tls
from shared.settings import settings_problems

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
    await agent.start()
    watcher = asyncio.create_task(agent.watch_expiry(), name="config-expiry")
    config = uvicorn.Config(
        create_app(agent),
        host=settings.listen.host,
        port=settings.listen.port,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        **uvicorn_tls(agent.tls),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        port = server.servers[0].sockets[0].getsockname()[1]
        scheme = "https" if agent.tls.enrolled else "http"
        print(f"SANCTUM_GW_READY management={scheme}://{settings.listen.host}:{port}", flush=True)
        logger.info("gateway agent ready gateway=%s", settings.name)
    await task
    watcher.cancel()
    if not server.started:
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
    # uvicorn handles SIGINT/SIGTERM itself for a single server.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    asyncio.run(serve(settings))
