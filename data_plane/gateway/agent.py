"""The gateway agent's use cases: apply a signed gateway config, report health.

Applying runs in one order, under one lock: verify (signature, gateway, version), check
the gateway key and open the sealed PSKs, render nginx and run ``nginx -t`` on it, then
change the machine: ``wg syncconf``, swap nginx's config and reload it, reload iptables.
Nothing on the machine changes until everything that can be checked has been; if a
later step fails, WireGuard is put back to the last good config, nginx keeps its last
good file, and the new config is not saved, so the control plane's next push retries.

A config that expires is taken down by itself (:meth:`GatewayAgent.watch_expiry`):
every peer is removed from WireGuard and nginx answers 444 to all, until the control
plane's next config arrives. A gateway that can't hear from the control plane fails
closed rather than keep peers that may have been disabled since.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from data_plane.config_store import NO_CONFIG, ConfigRejected, ReleaseStore, TrustStore
from data_plane.gateway.commands import CommandFailed
from data_plane.gateway.firewall import Firewall
from data_plane.gateway.nginx import INGRESS_KEY, Nginx, NginxCheckFailed, TemplateError
from data_plane.gateway.settings import GatewaySettings
from data_plane.gateway.wireguard import InterfaceMissing, WireGuard
from data_plane.tls import ManagementTLS
from shared.gateway import GatewayConfig, SealError, open_gateway_config, open_preshared_key
from shared.keys import KeyFileError, ensure_key_pair, load_private_key
from shared.management import CERTIFICATE_INVALID
from shared.pki import CertificateError, check_issued, load_tls_key
from shared.signed_request import ReplayGuard, SignedRequestVerifier
from shared.trust import MANAGEMENT
from shared.wireguard import WireGuardKeyError, public_key, read_private_key

logger = logging.getLogger(__name__)


class GatewayAgent:
    """Everything the management routes need, with a start."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        wireguard: WireGuard | None = None,
        nginx: Nginx | None = None,
        firewall: Firewall | None = None,
    ) -> None:
        self.settings = settings
        trust = TrustStore(settings.trust_keys_path, settings.state_dir / "trust.json")
        self.store: ReleaseStore[GatewayConfig] = ReleaseStore(
            settings.config_path.parent,
            settings.config_path.name.removesuffix(".jws"),
            settings.name,
            trust,
            open_gateway_config,
        )
        self.requests = SignedRequestVerifier(
            lambda: trust.public_keys(MANAGEMENT),
            settings.name,
            ReplayGuard(settings.state_dir / "replay.log"),
        )
        self.signing_key = (
            load_private_key(settings.signing_key)
            if settings.signing_key is not None
            else ensure_key_pair(settings.keys_dir, "gateway")
        )
        self.tls = ManagementTLS(settings.tls_path, settings.name)
        self._closed_for_expiry = False
        self.wireguard = wireguard or WireGuard(settings.wireguard)
        self.nginx = nginx or Nginx(settings)
        self.firewall = firewall or Firewall(settings.firewall)
        self.last_error: str | None = None
        self.applied_at: float | None = None
        self.started_at = time.time()
        self._lock = asyncio.Lock()

    # --- keys --------------------------------------------------------------------------

    def private_key(self) -> str:
        """The gateway's WireGuard private key, from its file (0600, written at boot)."""
        try:
            return read_private_key(self.settings.wireguard_key_path)
        except WireGuardKeyError as exc:
            raise ConfigRejected(503, "gateway_key_unavailable", str(exc)) from None

    def _backbone_key(self, config: GatewayConfig) -> str | None:
        """The backbone's private key when ``config`` puts the gateway on it."""
        if config.backbone is None:
            return None
        path = self.settings.wireguard.backbone_private_key
        if path is None:
            raise ConfigRejected(
                409,
                "backbone_not_configured",
                "the config puts this gateway on the backbone, but it has no backbone key "
                "(SANCTUM_GW_WIREGUARD__BACKBONE_PRIVATE_KEY)",
            )
        try:
            text = read_private_key(path)
        except WireGuardKeyError as exc:
            raise ConfigRejected(503, "gateway_key_unavailable", str(exc)) from None
        if public_key(text) != config.backbone.public_key:
            raise ConfigRejected(
                409, "wrong_backbone_key", "the config names another backbone key than this one"
            )
        return text

    def _open_psks(self, config: GatewayConfig, private: str) -> dict[str, str]:
        if public_key(private) != config.interface.public_key:
            raise ConfigRejected(
                409,
                "wrong_gateway_key",
                "config is sealed to another WireGuard key than this gateway's",
            )
        psks = {}
        for peer in config.enabled_peers():
            if peer.preshared_key is None:
                continue
            try:
                psks[peer.public_key] = open_preshared_key(
                    peer.preshared_key,
                    gateway=config.gateway,
                    gateway_private_key=private,
                    peer_public_key=peer.public_key,
                )
            except SealError:
                raise ConfigRejected(
                    422, "sealed_key_invalid", f"peer {peer.id}: its preshared key does not open"
                ) from None
        return psks

    # --- applying ----------------------------------------------------------------------

    async def start(self) -> None:
        """Re-apply the saved config, or put up nginx with nobody allowed."""
        saved = self.store.load_saved()
        try:
            if saved is None:
                text = self.nginx.render(None)
                await self.nginx.check(text)
                await self.nginx.install(text)
                logger.info("gateway started without config: every connection gets 444")
                return
            token, config = saved
            if config.expired(datetime.now(UTC)):
                self.store.commit(token, config)  # held (health names it), not served:
                await self._close(config)  # the watcher retries this if it fails
            else:
                await self._apply(config)
                self.store.commit(token, config)
            logger.info("gateway started with saved config version=%d", config.version)
        except (ConfigRejected, CommandFailed, NginxCheckFailed, TemplateError) as exc:
            self.last_error = _describe(exc)
            logger.error("gateway start incomplete: %s", self.last_error)

    async def apply(self, token: str) -> GatewayConfig:
        """Apply a signed config; raises :class:`ConfigRejected` and keeps the last good."""
        async with self._lock:
            config = self.store.check(token)
            self._check_certificates(config)
            try:
                await self._apply(config)
            except ConfigRejected as exc:
                self.last_error = f"version {config.version}: {exc.message}"
                raise
            self.store.commit(token, config)
            self.tls.install(config.tls)
            self._closed_for_expiry = False
            self.last_error = None
            self.applied_at = time.time()
            logger.info(
                "gateway config applied version=%d peers=%d enabled=%d upstreams=%d",
                config.version,
                len(config.peers),
                len(config.enabled_peers()),
                len(config.upstreams),
            )
            return config

    def _check_certificates(self, config: GatewayConfig) -> None:
        """Refuse certificates that are not for this gateway's keys and name."""
        if config.tls is None:
            return
        try:
            self.tls.check(config.tls)
            key_path = self.settings.tls_path / INGRESS_KEY
            if config.tls.ingress_certificate and key_path.exists():
                check_issued(
                    config.tls.ingress_certificate,
                    config.tls.ingress_ca or "",
                    load_tls_key(key_path),
                    config.gateway,
                )
        except (CertificateError, KeyFileError) as exc:
            raise ConfigRejected(422, CERTIFICATE_INVALID, str(exc)) from None

    @staticmethod
    def _effective(config: GatewayConfig) -> GatewayConfig:
        """``config``, or once it has expired the same with no peer at all."""
        if not config.expired(datetime.now(UTC)):
            return config
        return config.model_copy(update={"peers": (), "allow": ()})

    async def watch_expiry(self, every: float = 5.0) -> None:
        """Take the peers down when the held config expires (runs for the agent's life).

        Until that has worked it is tried again on every tick; whatever fails, the
        WireGuard peers go first (:meth:`_close`).
        """
        while True:
            await asyncio.sleep(every)
            config = self.store.current
            if config is None or self._closed_for_expiry or not config.expired(datetime.now(UTC)):
                continue
            async with self._lock:
                try:
                    await self._close(config)
                except Exception as exc:
                    self.last_error = f"closing the expired config: {_describe(exc)}"
                    logger.error("expired config not yet closed: %s", type(exc).__name__)

    async def _close(self, config: GatewayConfig) -> None:
        """Remove every peer (or, failing that, take the interface down), then apply the
        peerless config to nginx and the firewall; mark it closed once WireGuard is."""
        closed = self._effective(config)
        try:
            await self.wireguard.sync(closed, self.private_key(), {})
        except (ConfigRejected, CommandFailed, InterfaceMissing):
            await self.wireguard.down(config.interface.name)
        self._closed_for_expiry = True
        logger.warning("gateway config version=%d expired: peers removed", config.version)
        await self._apply(closed)

    async def _apply(self, config: GatewayConfig) -> None:
        private = self.private_key()
        psks = self._open_psks(config, private)
        backbone_key = self._backbone_key(config)
        try:
            text = self.nginx.render(config)
        except (OSError, TemplateError) as exc:
            raise ConfigRejected(503, "gateway_misconfigured", _describe(exc)) from None
        try:
            # nginx binds the tunnel addresses, so they must exist before it is checked
            # (the first config, or a pool that gained IPv6); the peers stay untouched.
            await self.wireguard.add_addresses(config.interface.name, config.interface.addresses)
        except (CommandFailed, InterfaceMissing) as exc:
            raise ConfigRejected(503, "wireguard_apply_failed", _describe(exc)) from None
        try:
            await self.nginx.check(text)
        except NginxCheckFailed as exc:
            raise ConfigRejected(
                422, "nginx_config_invalid", f"nginx -t refused it: {exc.detail}"
            ) from None
        try:
            # The backbone first: nginx must not send to a node before the path is there.
            if config.backbone is not None and backbone_key is not None:
                await self.wireguard.sync_backbone(config.backbone, backbone_key)
            await self.wireguard.sync(config, private, psks)
        except (CommandFailed, InterfaceMissing) as exc:
            await self._restore_wireguard(private)
            raise ConfigRejected(503, "wireguard_apply_failed", _describe(exc)) from None
        try:
            await self.nginx.install(text)
        except CommandFailed as exc:
            await self._restore_wireguard(private)
            raise ConfigRejected(503, "nginx_reload_failed", _describe(exc)) from None
        try:
            await self.firewall.reload(config)
        except CommandFailed as exc:
            raise ConfigRejected(503, "firewall_reload_failed", _describe(exc)) from None

    async def _restore_wireguard(self, private: str) -> None:
        previous = self.store.current
        if previous is None:
            return
        try:
            await self.wireguard.sync(
                self._effective(previous), private, self._open_psks(previous, private)
            )
            logger.warning("wireguard put back to version=%d", previous.version)
        except (CommandFailed, InterfaceMissing, ConfigRejected) as exc:
            logger.error("wireguard could not be put back: %s", _describe(exc))

    # --- reporting ---------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """Config version, the interface, and each peer's latest handshake (metadata)."""
        config = self.store.current
        iface_name = config.interface.name if config else None
        interface: dict[str, Any] | None = None
        peers: list[dict[str, Any]] = []
        problems = [self.last_error] if self.last_error else []
        problems += [p for p in self.store.problems() if p != NO_CONFIG]
        if iface_name:
            try:
                status = await self.wireguard.status(iface_name)
            except (InterfaceMissing, CommandFailed) as exc:
                problems.append(_describe(exc))
            else:
                ids = {p.public_key: p for p in config.peers} if config else {}
                interface = {
                    "name": status.name,
                    "ifindex": status.ifindex,
                    "public_key": status.public_key,
                    "listen_port": status.listen_port,
                }
                for peer in status.peers:
                    known = ids.get(peer.public_key)
                    peers.append(
                        {
                            "id": known.id if known else None,
                            "client": known.client if known else None,
                            "public_key": peer.public_key,
                            "latest_handshake": peer.latest_handshake,
                            "rx_bytes": peer.rx_bytes,
                            "tx_bytes": peer.tx_bytes,
                        }
                    )
        nginx_running = self.nginx.master_pid() is not None
        if not nginx_running:
            problems.append("nginx is not running")
        return {
            "status": "ok" if not problems else "degraded",
            "gateway": self.settings.name,
            **self.store.summary(),
            "applied_at": int(self.applied_at) if self.applied_at else None,
            "interface": interface,
            "nginx": {"running": nginx_running},
            "management_certificate": self.tls.certificate_summary(),
            "peers": peers,
            "problems": problems,
            "uptime_seconds": int(time.time() - self.started_at),
        }


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConfigRejected):
        return exc.message
    if isinstance(exc, CommandFailed):
        return str(exc)
    if isinstance(exc, NginxCheckFailed):
        return f"nginx -t: {exc.detail}"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or ''} {exc.filename or ''}".strip()
    return str(exc)
