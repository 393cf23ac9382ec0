"""The control plane's typed settings, read from ``SANCTUM_CP_*`` environment variables.

Nested sections use ``__`` (``SANCTUM_CP_LISTEN__PORT=8100``). Two conventional names are
read without the prefix: ``DATABASE_URL`` (dj-database-url; SQLite under the data
directory when unset) and ``REDIS_URL`` (the Celery broker; tasks run in-process when
unset). A ``SANCTUM_CP_*`` variable that is not a setting is refused at start, naming the
closest one (``shared.settings``). ``control_plane.settings`` turns this object into
Django settings.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from shared.keyring import KEYRING_DIR
from shared.settings import StrictEnvSettings
from shared.tracing import TracingSettings
from shared.trust import TRUST_FILE

# Django's deploy check wants at least 50 characters and 5 distinct ones.
MIN_SECRET_KEY_LENGTH = 50


class ListenSettings(BaseModel):
    """Where gunicorn binds: the management address, never a public one."""

    host: str = "127.0.0.1"
    port: int = Field(default=8100, ge=0, le=65535)


class RolloutSettings(BaseModel):
    """How pushes to the nodes' management listeners behave."""

    connect_timeout_seconds: float = Field(default=3.0, gt=0)
    # Applying a bundle may load a model on the node, so the read timeout is generous.
    timeout_seconds: float = Field(default=60.0, gt=0)
    max_retries: int | None = Field(
        default=None,
        ge=0,
        description="task retries of a failed push (default: 8 with a broker, 0 in-process)",
    )
    retry_backoff_max_seconds: int = Field(default=300, ge=1)
    health_poll_seconds: float = Field(default=30.0, gt=0)
    health_timeout_seconds: float = Field(default=5.0, gt=0)
    peer_expiry_seconds: float = Field(
        default=60.0, gt=0, description="how often beat disables expired WireGuard peers"
    )
    on_change: bool = Field(
        default=True,
        description="a change that alters what nodes or gateways hold (a revoked key, a "
        "disabled client or peer, a pin) releases it to them when it commits",
    )
    release_lifetime_seconds: int = Field(
        default=86_400,
        ge=60,
        description="a release expires this long after it is made; a target holding only "
        "an expired one refuses clients",
    )
    renew_before_seconds: int = Field(
        default=43_200,
        ge=30,
        description="a new release is made this long before the latest one expires",
    )

    @model_validator(mode="after")
    def _renew_in_time(self) -> RolloutSettings:
        if self.renew_before_seconds >= self.release_lifetime_seconds:
            raise ValueError("renew_before_seconds must be less than release_lifetime_seconds")
        return self


class KeySettings(BaseModel):
    """How the keyring's rotations proceed (docs/operations.md, "Rotating keys")."""

    overlap_seconds: int = Field(
        default=86_400,
        ge=0,
        description="how long a replaced config or management key stays trusted",
    )
    auto_activate: bool = Field(
        default=True,
        description="a next key signs once every enabled node and gateway trusts it",
    )
    check_seconds: float = Field(
        default=30.0, gt=0, description="how often beat looks at keys and release expiry"
    )


class TlsSettings(BaseModel):
    """The internal CAs (``shared.pki``): where they live and how long what they issue lasts.

    Management certificates are short-lived and renewed through the rollout: a target's
    next release brings a new one, for the key it made at enrolment, ``renew_before``
    ahead of the expiry. Keep ``renew_before_seconds`` well above the rollout's own
    renewal interval so a target that misses one release still gets the next in time.
    """

    ca_dir: Path | None = Field(
        default=None,
        description="the CAs' directory: management/ and ingress/ (ca.key 0600, ca.crt) and "
        "the control plane's client certificate (development: data_dir/keys/ca, made on "
        "first use)",
    )
    certificate_lifetime_seconds: int = Field(
        default=7 * 86_400,
        ge=3600,
        description="management certificates of nodes, gateways and the control plane",
    )
    ingress_certificate_lifetime_seconds: int = Field(
        default=30 * 86_400, ge=3600, description="a gateway's ingress (nginx) certificate"
    )
    renew_before_seconds: int = Field(
        default=2 * 86_400, ge=600, description="re-issue this long before a certificate expires"
    )
    enrolment_token_lifetime_seconds: int = Field(
        default=3600, ge=60, le=7 * 86_400, description="how long an enrolment token may be used"
    )

    @model_validator(mode="after")
    def _renew_in_time(self) -> TlsSettings:
        shortest = min(self.certificate_lifetime_seconds, self.ingress_certificate_lifetime_seconds)
        if self.renew_before_seconds >= shortest:
            raise ValueError("tls.renew_before_seconds must be less than every lifetime")
        return self


class LedgerSettings(BaseModel):
    """The receipt ledger: its name in signed tree heads, and collection from the nodes."""

    origin: str = Field(
        default="sanctum.invalid/receipts",
        pattern=r"^[!-*,-~]+$",
        description="the log's origin, the first line of every checkpoint (and its key name)",
    )
    key_name: str | None = Field(
        default=None,
        pattern=r"^[!-*,-~]+$",
        description="the signed-note key name tree heads are signed as (default: the origin)",
    )
    collect_interval_seconds: float = Field(default=10.0, gt=0)
    page_size: int = Field(default=500, ge=1, le=1000)
    max_pages_per_run: int = Field(default=20, ge=1)
    connect_timeout_seconds: float = Field(default=3.0, gt=0)
    timeout_seconds: float = Field(default=20.0, gt=0)
    witness_file: Path | None = Field(
        default=None,
        description="a file outside the database (on another volume, not in the backup set) "
        "that keeps the newest signed tree head; a control plane restored from an older "
        "backup refuses to sign until its ledger has grown back to it",
    )

    @property
    def note_key_name(self) -> str:
        return self.key_name or self.origin


class KnowledgeSettings(BaseModel):
    """Loading knowledge bases: the upload cap and how long a node may take to answer.

    Uploads are held in RAM only (never a temporary file): ``max_upload_bytes`` bounds the
    RAM one request may take, and a bigger request is answered 413 before it is read.
    """

    max_upload_bytes: int = Field(
        default=32 * 1_048_576,
        ge=1024,
        description="one upload request to the control plane (all its files), in bytes",
    )
    connect_timeout_seconds: float = Field(default=3.0, gt=0)
    # A node parses and embeds a batch before it answers: minutes for a large one.
    node_timeout_seconds: float = Field(default=300.0, gt=0)


def _split_list(value: object) -> object:
    """Accept ``a,b`` or a JSON list for list settings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


class MetricsSettings(BaseModel):
    """``GET /metrics`` for Prometheus (docs/operations.md, "Metrics and health")."""

    token_file: Path | None = Field(
        default=None,
        description="file holding the scrapers' bearer token (0600); unset: /metrics is 404",
    )


OperatorRole = Literal["admin", "auditor"]
OIDC_ENDPOINTS = ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri")


class OidcSettings(BaseModel):
    """Operators' single sign-on through an OpenID Connect provider (off unless set).

    The provider's endpoints come from its discovery document (``issuer`` +
    ``/.well-known/openid-configuration``, read at the first sign-in) unless all four are
    given; the issuer is required either way (ID tokens must name it). The client secret
    is read from a file (a systemd credential, 0600), never from the environment, so it
    does not show in ``/proc/PID/environ`` or a unit file.
    """

    issuer: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="the provider's issuer URL; ID tokens must name it",
    )
    authorization_endpoint: str | None = Field(default=None, pattern=r"^https?://")
    token_endpoint: str | None = Field(default=None, pattern=r"^https?://")
    userinfo_endpoint: str | None = Field(default=None, pattern=r"^https?://")
    jwks_uri: str | None = Field(default=None, pattern=r"^https?://")
    client_id: str | None = None
    client_secret_file: Path | None = Field(
        default=None, description="a file holding the client secret (and nothing else)"
    )
    provider_name: str = Field(
        default="single sign-on", description='shown on the login page: "Sign in with ..."'
    )
    scopes: str = "openid email profile"
    roles_claim: str = Field(
        default="groups",
        description="the claim listing the user's groups or roles (a dotted path such as "
        "realm_access.roles reaches into an object)",
    )
    admin_groups: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["sanctum-admins"],
        description="values of the roles claim that make the user an admin",
    )
    auditor_groups: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["sanctum-auditors"],
        description="values of the roles claim that make the user an auditor",
    )
    username_claim: str = Field(
        default="preferred_username",
        description="the claim a new operator's user name is taken from (then email, sub)",
    )
    scope_new_auditors: bool = Field(
        default=True,
        description="an auditor's first sign-in through the provider scopes it to no "
        "client (an admin assigns its clients); false: it sees every client",
    )
    sign_algorithm: Literal["RS256", "RS384", "RS512", "ES256", "ES384", "ES512"] = "RS256"
    timeout_seconds: float = Field(default=10.0, gt=0)

    @field_validator("admin_groups", "auditor_groups", mode="before")
    @classmethod
    def _lists_from_text(cls, value: object) -> object:
        return _split_list(value)

    @model_validator(mode="after")
    def _complete_or_absent(self) -> OidcSettings:
        endpoints = [getattr(self, name) for name in OIDC_ENDPOINTS]
        if not (self.issuer or any(endpoints) or self.client_id or self.client_secret_file):
            return self
        problems = []
        if not self.client_id:
            problems.append("SANCTUM_CP_AUTH__OIDC__CLIENT_ID is required")
        if self.client_secret_file is None:
            problems.append("SANCTUM_CP_AUTH__OIDC__CLIENT_SECRET_FILE is required")
        elif not self.client_secret_file.is_file():
            problems.append(
                f"SANCTUM_CP_AUTH__OIDC__CLIENT_SECRET_FILE: no file at {self.client_secret_file}"
            )
        if not self.issuer:
            # Even with every endpoint given: the ID token's iss is checked against it.
            problems.append("SANCTUM_CP_AUTH__OIDC__ISSUER is required")
        elif any(endpoints) and not all(endpoints):
            problems.append(
                "give all of "
                + ", ".join(f"SANCTUM_CP_AUTH__OIDC__{name.upper()}" for name in OIDC_ENDPOINTS)
                + " or none (then the issuer's discovery document names them)"
            )
        if set(self.admin_groups) & set(self.auditor_groups):
            problems.append("SANCTUM_CP_AUTH__OIDC__ADMIN_GROUPS and __AUDITOR_GROUPS overlap")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def enabled(self) -> bool:
        return self.client_id is not None

    def client_secret(self) -> str:
        """The client secret, read from its file (stripped of the trailing newline)."""
        if self.client_secret_file is None:
            raise ValueError("no SANCTUM_CP_AUTH__OIDC__CLIENT_SECRET_FILE")
        secret = self.client_secret_file.read_text(encoding="utf-8").strip()
        if not secret:
            raise ValueError("SANCTUM_CP_AUTH__OIDC__CLIENT_SECRET_FILE is empty")
        return secret

    @property
    def role_groups(self) -> dict[str, list[str]]:
        """``{role: provider groups}``, what the roles claim is matched against."""
        return {"admin": self.admin_groups, "auditor": self.auditor_groups}


class AuthSettings(BaseModel):
    """How operators sign in: API tokens, single sign-on, TOTP and lockout
    (docs/operations.md, "Operators: single sign-on, MFA and lockout")."""

    token_ttl_seconds: int = Field(
        default=30 * 86_400,
        ge=60,
        le=366 * 86_400,
        description="an operator API token expires this long after it is issued",
    )
    oidc: OidcSettings = OidcSettings()
    mfa_required_for: Annotated[list[OperatorRole] | None, NoDecode] = Field(
        default=None,
        description="roles that must sign in with a TOTP code (default: admin in "
        "production, nobody in development); production always includes admin",
    )
    lockout_failures: int = Field(
        default=5, ge=1, le=100, description="failed sign-ins (per user name and address)"
    )
    lockout_cooloff_seconds: int = Field(default=900, ge=60, description="how long a lockout lasts")

    @field_validator("mfa_required_for", mode="before")
    @classmethod
    def _roles_from_text(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return []
        return _split_list(value)


class ControlPlaneSettings(StrictEnvSettings):
    """Everything the control plane needs from its environment. Holds no client content."""

    model_config = SettingsConfigDict(
        env_prefix="SANCTUM_CP_", env_nested_delimiter="__", extra="ignore"
    )

    # SANCTUM_CP_* names that control-plane.env holds for another reader: none so far
    # (`sanctum keys` reads SANCTUM_CP_KEYRING, a setting). The SANCTUM_CP_* lines that
    # commands print (SANCTUM_CP_READY, SANCTUM_CP_TRUST_KEYS, ...) are output, not input.
    read_elsewhere: ClassVar[frozenset[str]] = frozenset()

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("var/control-plane")
    secret_key: SecretStr | None = Field(
        default=None, description="Django SECRET_KEY (development: generated in data_dir)"
    )
    keyring: Path | None = Field(
        default=None,
        description="the keyring directory: one signing key per purpose (development: "
        "data_dir/keys/control-plane, made on first use)",
    )
    keys: KeySettings = KeySettings()
    tls: TlsSettings = TlsSettings()
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    csrf_trusted_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    behind_tls_proxy: bool = Field(
        default=False,
        description="trust X-Forwarded-Proto and X-Forwarded-For from the reverse proxy "
        "that terminates TLS",
    )
    proxy_count: int = Field(
        default=1,
        ge=1,
        le=10,
        description="reverse proxies in front of the control plane (when behind_tls_proxy): "
        "the client's address is the one the outermost proxy added to X-Forwarded-For",
    )
    ssl_redirect: bool = True
    hsts_seconds: int = Field(default=31_536_000, ge=0)
    debug: bool = False
    log_level: str = "INFO"
    listen: ListenSettings = ListenSettings()
    rollout: RolloutSettings = RolloutSettings()
    ledger: LedgerSettings = LedgerSettings()
    knowledge: KnowledgeSettings = KnowledgeSettings()
    auth: AuthSettings = AuthSettings()
    metrics: MetricsSettings = MetricsSettings()
    tracing: TracingSettings = TracingSettings()
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "SANCTUM_CP_DATABASE_URL")
    )
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "SANCTUM_CP_REDIS_URL")
    )

    @field_validator("allowed_hosts", "csrf_trusted_origins", mode="before")
    @classmethod
    def _lists_from_text(cls, value: object) -> object:
        return _split_list(value)

    @model_validator(mode="after")
    def _production_needs_explicit_secrets(self) -> ControlPlaneSettings:
        if self.environment != "production":
            return self
        problems = []
        if self.secret_key is None:
            problems.append("SANCTUM_CP_SECRET_KEY is required")
        elif len(self.secret_key.get_secret_value()) < MIN_SECRET_KEY_LENGTH:
            problems.append(f"SANCTUM_CP_SECRET_KEY needs {MIN_SECRET_KEY_LENGTH}+ characters")
        if self.keyring is None:
            problems.append(
                "SANCTUM_CP_KEYRING is required: production must not sign with keys it "
                "generated for itself (make it with: sanctum keys init --keyring DIR)"
            )
        elif not (self.keyring / "keyring.json").is_file():
            problems.append(f"SANCTUM_CP_KEYRING: no keyring at {self.keyring}")
        if self.tls.ca_dir is None:
            problems.append(
                "SANCTUM_CP_TLS__CA_DIR is required: production must not run a CA it made "
                "for itself (make it with: python -m control_plane tls init --ca-dir DIR)"
            )
        elif not (self.tls.ca_dir / "management" / "ca.key").is_file():
            problems.append(f"SANCTUM_CP_TLS__CA_DIR: no management CA at {self.tls.ca_dir}")
        if self.debug:
            problems.append("SANCTUM_CP_DEBUG must be off in production")
        if self.auth.mfa_required_for is not None and "admin" not in self.auth.mfa_required_for:
            problems.append("SANCTUM_CP_AUTH__MFA_REQUIRED_FOR must include admin in production")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def mfa_required_roles(self) -> list[str]:
        """Roles whose local accounts must sign in with a TOTP code."""
        if self.auth.mfa_required_for is not None:
            return list(self.auth.mfa_required_for)
        return ["admin"] if self.production else []

    @property
    def forwarded_for_hops(self) -> int | None:
        """X-Forwarded-For entries right of the client's that our own proxies wrote (the
        last proxy is the peer address, not in the header); None: ignore the header."""
        return self.proxy_count - 1 if self.behind_tls_proxy else None

    @property
    def eager_tasks(self) -> bool:
        """No broker: Celery tasks run in the calling process (the embedded default)."""
        return not self.redis_url

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def keyring_dir(self) -> Path:
        return self.keyring or self.keys_dir / KEYRING_DIR

    @property
    def ca_dir(self) -> Path:
        return self.tls.ca_dir or self.keys_dir / "ca"

    @property
    def published_keys_path(self) -> Path:
        """Where the public key set is kept up to date (for nodes, gateways, auditors)."""
        return self.keyring_dir.parent / TRUST_FILE

    @property
    def push_max_retries(self) -> int:
        if self.rollout.max_retries is not None:
            return self.rollout.max_retries
        # In-process, a retry would run at once and block the request that rolled out;
        # the reconciler (or beat) catches a node up when it is back instead.
        return 0 if self.eager_tasks else 8

    def resolved_secret_key(self) -> str:
        """The configured key, or (development only) one kept in ``data_dir/secret_key``."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        path = self.data_dir / "secret_key"
        if not path.exists():
            # gunicorn and Celery workers may start together: write a private temp file
            # and link it into place, so exactly one key wins and nobody reads half a file.
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".secret_key.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secrets.token_urlsafe(48).encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_text(encoding="ascii").strip()
