"""Django settings for the control plane, built from :class:`ControlPlaneSettings`.

Nothing here reads ``os.environ`` directly: the typed object does, and refuses what is
missing or unsafe. A bad environment raises ``ImproperlyConfigured`` naming the field,
never echoing its value (it may be a secret).
"""

from __future__ import annotations

from datetime import timedelta
from typing import NotRequired, TypedDict

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from pydantic import ValidationError

from control_plane.environment import ControlPlaneSettings
from shared.settings import settings_problems

try:
    CP = ControlPlaneSettings()
except ValidationError as exc:
    raise ImproperlyConfigured(f"control plane environment: {settings_problems(exc)}") from None

CP.data_dir.mkdir(parents=True, exist_ok=True)

SECRET_KEY = CP.resolved_secret_key()
DEBUG = CP.debug
ALLOWED_HOSTS = sorted({*CP.allowed_hosts, CP.listen.host, "localhost", "127.0.0.1"})
CSRF_TRUSTED_ORIGINS = CP.csrf_trusted_origins

INSTALLED_APPS = [
    # Django's admin with the TOTP-aware site (control_plane.accounts.sites) as admin.site.
    "control_plane.accounts.apps.SanctumAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    # Operators' API tokens, stored as SHA-512 digests with an expiry (never in clear).
    "knox",
    "django_filters",
    "drf_spectacular",
    # TOTP for local operators' accounts (control_plane.accounts.mfa).
    "django_otp",
    "django_otp.plugins.otp_totp",
    # Lockout after repeated failed sign-ins, per user name and address.
    "axes",
    "control_plane.core",
    "control_plane.changes",
    "control_plane.accounts",
    "control_plane.clients",
    "control_plane.registry",
    "control_plane.fleet",
    "control_plane.knowledge",
    "control_plane.network",
    "control_plane.audit",
    "control_plane.pki",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # request.user.is_verified() (django-otp); single sign-on sessions count as verified.
    "control_plane.accounts.middleware.OperatorOTPMiddleware",
    "control_plane.accounts.middleware.EnrolmentRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "control_plane.changes.middleware.ChangeContextMiddleware",
    # Last, as django-axes asks: it turns a lockout into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "control_plane.urls"
WSGI_APPLICATION = "control_plane.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        CP.database_url or f"sqlite:///{(CP.data_dir / 'control-plane.sqlite3').resolve()}",
        conn_max_age=60,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Gunicorn workers, the Celery worker and beat share one file: wait for the write
    # lock instead of failing at once, and take it at BEGIN so reads don't deadlock.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Uploads (knowledge-base documents) stay in RAM, whatever their size, up to a cap per
# request: never Django's temporary-file handler (control_plane.knowledge.uploads).
FILE_UPLOAD_HANDLERS = ["control_plane.knowledge.uploads.InMemoryUploadHandler"]

# The auditor's page signs in through the admin's login form (operators are staff users).
LOGIN_URL = "/admin/login/"

# --- Operators' sign-in (docs/operations.md, "Operators: single sign-on, MFA and lockout")
# django-axes first: it refuses a locked-out user name and address before any password
# is checked. Single sign-on's backend only when a provider is configured.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    # Django's ModelBackend that refuses a scoped auditor all but the audit pages; it
    # must come before any other backend that grants permissions, the single sign-on
    # one included (control_plane.audit.backends; check sanctum.E001).
    "control_plane.audit.backends.ScopedAuditorBackend",
]
# An admin may see and delete an operator's TOTP device, never its secret (no key field,
# no config or QR code page): one rogue admin must not collect every admin's seed.
OTP_ADMIN_HIDE_SENSITIVE_DATA = True
AXES_FAILURE_LIMIT = CP.auth.lockout_failures
AXES_COOLOFF_TIME = timedelta(seconds=CP.auth.lockout_cooloff_seconds)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "accounts/locked_out.html"
AXES_HTTP_RESPONSE_CODE = 429
# Kept out of the attempts axes stores: the OTP code and the callback's one-time code.
AXES_SENSITIVE_PARAMETERS = ["password", "otp_token", "code", "state"]
AXES_WHITELIST_CALLABLE = "control_plane.accounts.oidc.is_sso_callback"
AXES_IPWARE_PROXY_ORDER = "left-most"
if CP.forwarded_for_hops is not None:
    # X-Forwarded-For holds the client and every proxy but the last (that one is
    # REMOTE_ADDR): the client is forwarded_for_hops entries from the right, and anything
    # to its left was sent by the client itself and is not trusted.
    AXES_IPWARE_META_PRECEDENCE_ORDER = ["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"]
    AXES_IPWARE_PROXY_COUNT = CP.forwarded_for_hops
    # Count from the right even when the client sent an X-Forwarded-For of its own (a
    # proxy that appends keeps it): django-ipware's strict mode would then fall back to
    # REMOTE_ADDR, the proxy, and lock every client out together.
    IPWARE_STRICT = False
else:
    AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]

OTP_TOTP_ISSUER = "Sanctum control plane"

if CP.auth.oidc.enabled:
    AUTHENTICATION_BACKENDS.append("control_plane.accounts.oidc.OperatorOIDCBackend")
    # Read by mozilla-django-oidc's views; the backend reads CP.auth.oidc itself.
    OIDC_RP_CLIENT_ID = CP.auth.oidc.client_id
    OIDC_RP_SCOPES = CP.auth.oidc.scopes
    OIDC_USE_PKCE = True
    OIDC_USE_NONCE = True
    OIDC_TIMEOUT = CP.auth.oidc.timeout_seconds
    OIDC_AUTHENTICATION_CALLBACK_URL = "oidc_authentication_callback"
    LOGOUT_REDIRECT_URL = "/admin/login/"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = CP.data_dir / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns about a missing one at every start
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# In development whitenoise serves straight from the apps' static folders; in production
# `python -m control_plane serve` runs collectstatic into STATIC_ROOT first.
WHITENOISE_USE_FINDERS = not CP.production

# --- Security ---------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = int(timedelta(hours=8).total_seconds())
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if CP.production:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = CP.ssl_redirect
    SECURE_HSTS_SECONDS = CP.hsts_seconds
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
if CP.behind_tls_proxy:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- REST API ---------------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: its WWW-Authenticate header is what turns "not logged in" into 401.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "knox.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["control_plane.core.api.permissions.ModelPermissions"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "control_plane.core.api.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "control_plane.core.api.exceptions.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + ([] if CP.production else ["rest_framework.renderers.BrowsableAPIRenderer"]),
}
# GET /metrics (control_plane.core.metrics): the scrapers' token, or None for no metrics.
SANCTUM_METRICS_TOKEN_FILE = CP.metrics.token_file

REST_KNOX = {
    "TOKEN_TTL": timedelta(seconds=CP.auth.token_ttl_seconds),
    # Recognisable in a leaked file or a secret scanner; knox keeps only its digest.
    "TOKEN_PREFIX": "sncop_",
    "AUTO_REFRESH": False,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Sanctum control plane API",
    "DESCRIPTION": (
        "Clients, API keys, model pins, nodes, config releases, knowledge bases, gateways "
        "and peers; "
        "receipts, the signed ledger and audit bundles."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "ApiKeyStatusEnum": "control_plane.clients.choices.ApiKeyStatus",
        "ReleaseStatusEnum": "control_plane.core.choices.ReleaseStatus",
        "HealthStatusEnum": "control_plane.core.choices.HealthStatus",
        "HashStatusEnum": "control_plane.registry.choices.HashStatus",
        "PeerStatusEnum": "control_plane.network.choices.PeerStatus",
        "CopyStatusEnum": "control_plane.knowledge.choices.CopyStatus",
        "PoolKindEnum": "control_plane.fleet.choices.PoolKind",
        "TargetKindEnum": "control_plane.pki.choices.TargetKind",
    },
}

# --- Celery -----------------------------------------------------------------------------
CELERY_BROKER_URL = CP.redis_url or "memory://localhost/"
CELERY_TASK_ALWAYS_EAGER = CP.eager_tasks
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 3, "socket_timeout": 10}


class BeatEntry(TypedDict):
    """One periodic job: beat runs it, and so does ``python -m control_plane reconcile``."""

    task: str
    schedule: float
    args: NotRequired[tuple[str, ...]]


CELERY_BEAT_SCHEDULE: dict[str, BeatEntry] = {
    # One health poll per kind of rollout target (control_plane.core.rollout).
    "poll-node-health": {
        "task": "control_plane.core.tasks.poll_all_health",
        "schedule": CP.rollout.health_poll_seconds,
        "args": ("node",),
    },
    "poll-gateway-health": {
        "task": "control_plane.core.tasks.poll_all_health",
        "schedule": CP.rollout.health_poll_seconds,
        "args": ("gateway",),
    },
    # Key rotations move on; releases are re-issued before they expire.
    "keep-releases-fresh": {
        "task": "control_plane.core.tasks.keep_releases_fresh",
        "schedule": CP.keys.check_seconds,
    },
    "expire-peers": {
        "task": "control_plane.network.tasks.expire_peers",
        "schedule": CP.rollout.peer_expiry_seconds,
    },
    "collect-usage": {
        "task": "control_plane.audit.tasks.collect_fleet_usage",
        "schedule": CP.ledger.collect_interval_seconds,
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(CP.data_dir / "celerybeat-schedule")

# --- Sanctum ----------------------------------------------------------------------------
SANCTUM = CP

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": CP.log_level},
    "loggers": {
        "django.request": {"level": "ERROR"},
        # httpx logs each request's URL at INFO; a knowledge-base document's name travels
        # in one (DELETE ...?name=), and names stay out of the logs like content.
        "httpx": {"level": "WARNING"},
    },
}
