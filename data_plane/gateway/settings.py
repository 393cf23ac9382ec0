"""Typed settings for the gateway agent, read from ``SANCTUM_GW_*`` environment variables.

Nested sections use ``__``: ``SANCTUM_GW_NGINX__CONFIG=/var/lib/sanctum-gateway/nginx.conf``.
A ``SANCTUM_GW_*`` variable that is neither a setting nor one the gateway's scripts read
(``read_elsewhere``) is refused at start, naming the closest one (``shared.settings``).
Everything here is a local fact about this machine (paths, interface names, where to
listen); what the gateway serves comes only from the signed config.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import SettingsConfigDict

from shared.metrics import MetricsSettings
from shared.settings import StrictEnvSettings
from shared.tracing import TracingSettings
from shared.trust import TRUST_FILE

# The repository's infra/ folder: the agent is deployed from a checkout (see
# docs/network.md), and the provisioning script points these at the installed copy.
INFRA_DIR = Path(__file__).resolve().parents[2] / "infra"


class ListenSettings(BaseModel):
    """The management listener: bind it to the management address only."""

    host: str = "127.0.0.1"
    port: int = Field(default=8003, ge=0, le=65535)


class NginxSettings(BaseModel):
    """Where the rendered nginx config lives and how nginx is driven."""

    binary: str = "nginx"
    template: Path = INFRA_DIR / "nginx" / "gateway.conf.template"
    config: Path | None = Field(default=None, description="default: state_dir/nginx/nginx.conf")
    pid_file: Path | None = Field(default=None, description="default: state_dir/nginx/nginx.pid")
    log_dir: Path | None = Field(default=None, description="default: state_dir/nginx/log")
    temp_dir: Path | None = Field(default=None, description="default: state_dir/nginx/tmp")
    user: str | None = Field(default="www-data", description="worker user; None keeps nginx's")
    listen_host: str | None = Field(
        default=None,
        description="one address to listen on (default: the gateway's tunnel addresses, "
        "from the config; loopback before the first config)",
    )
    max_body: str = Field(default="2m", pattern=r"^[0-9]+[km]?$")
    start_if_stopped: bool = Field(
        default=True, description="start the master when no pid file names a live one"
    )


class WireGuardSettings(BaseModel):
    """The local WireGuard interfaces' private keys and the tools that drive them."""

    private_key: Path | None = Field(
        default=None, description="file holding the gateway's WireGuard private key"
    )
    backbone_private_key: Path | None = Field(
        default=None,
        description="file holding the gateway's backbone key (docs/network.md); needed "
        "once the gateway is on the backbone",
    )
    wg_binary: str = "wg"
    ip_binary: str = "ip"


class FirewallSettings(BaseModel):
    """The iptables reload script (infra/scripts/gateway-firewall.sh)."""

    script: Path | None = INFRA_DIR / "scripts" / "gateway-firewall.sh"
    public_interface: str = "eth0"


class GatewayMetricsSettings(MetricsSettings):
    """``SANCTUM_GW_METRICS__*``: the Prometheus scrape listener (shared.metrics)."""

    port: int = Field(default=9109, ge=0, le=65535)
    refresh_seconds: float = Field(
        default=5.0, gt=0, le=300, description="how often WireGuard and nginx are read"
    )


class GatewaySettings(StrictEnvSettings):
    """A gateway agent's settings. Nothing here is a secret except the key file's path."""

    model_config = SettingsConfigDict(env_prefix="SANCTUM_GW_", env_nested_delimiter="__")

    # Read from the same gateway.env by the boot units' scripts, not by the agent (which
    # hands the firewall script its own values from the signed config):
    # infra/scripts/wireguard-interface.sh and gateway-firewall.sh.
    read_elsewhere: ClassVar[frozenset[str]] = frozenset(
        {
            "SANCTUM_GW_WG_INTERFACE",
            "SANCTUM_GW_WG_PORT",
            "SANCTUM_GW_WG_ADDRESSES",
            "SANCTUM_GW_TUNNEL_PORTS",
            "SANCTUM_GW_BACKBONE_IF",
        }
    )

    environment: Literal["development", "production"] = "development"
    name: str = "gateway-1"
    state_dir: Path = Path("var/gateway")
    trust_keys: Path | None = Field(
        default=None,
        description="the control plane's published key set, JSON (default: "
        "state_dir/keys/control-plane-keys.json)",
    )
    signing_key: Path | None = Field(
        default=None,
        description="PEM of this gateway's Ed25519 key, which signs its health answers "
        "(default: state_dir/keys/gateway.key, made on first start in development)",
    )
    tls_dir: Path | None = Field(
        default=None,
        description="TLS keys and certificates, as `sanctum enrol gateway` writes them "
        "(default: state_dir/tls): management.* for the agent's listener (mutual TLS once "
        "there), ingress.key for nginx",
    )
    http_port: int = Field(
        default=80, ge=1, le=65535, description="nginx's port until a config names one"
    )
    max_config_bytes: int = Field(default=16 * 1_048_576, ge=1024)
    log_level: str = "INFO"
    listen: ListenSettings = ListenSettings()
    nginx: NginxSettings = NginxSettings()
    wireguard: WireGuardSettings = WireGuardSettings()
    firewall: FirewallSettings = FirewallSettings()
    metrics: GatewayMetricsSettings = GatewayMetricsSettings()
    tracing: TracingSettings = TracingSettings()

    @model_validator(mode="after")
    def _production_needs_explicit_paths(self) -> GatewaySettings:
        if self.environment == "production":
            if self.trust_keys is None:
                raise ValueError(
                    "production needs SANCTUM_GW_TRUST_KEYS: a gateway must not trust keys "
                    "it found lying in its own state directory"
                )
            if self.signing_key is None:
                raise ValueError(
                    "production needs SANCTUM_GW_SIGNING_KEY: the key is provisioned and "
                    "registered with the control plane, never made up at start"
                )
            if self.firewall.script is None:
                raise ValueError(
                    "production needs the firewall script (SANCTUM_GW_FIREWALL__SCRIPT)"
                )
        return self

    @property
    def trust_keys_path(self) -> Path:
        return self.trust_keys or self.keys_dir / TRUST_FILE

    @property
    def keys_dir(self) -> Path:
        return self.state_dir / "keys"

    @property
    def tls_path(self) -> Path:
        return self.tls_dir or self.state_dir / "tls"

    @property
    def wireguard_key_path(self) -> Path:
        return self.wireguard.private_key or self.state_dir / "wireguard.key"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "gateway-config.jws"

    @property
    def nginx_dir(self) -> Path:
        return self.state_dir / "nginx"

    @property
    def nginx_config(self) -> Path:
        return self.nginx.config or self.nginx_dir / "nginx.conf"

    @property
    def nginx_pid_file(self) -> Path:
        return self.nginx.pid_file or self.nginx_dir / "nginx.pid"

    @property
    def nginx_log_dir(self) -> Path:
        return self.nginx.log_dir or self.nginx_dir / "log"

    @property
    def nginx_temp_dir(self) -> Path:
        return self.nginx.temp_dir or self.nginx_dir / "tmp"
