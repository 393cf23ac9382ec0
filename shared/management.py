"""The management link's contract: paths, media types and error codes, defined once.

Both ends import these: the control plane when it pushes config, reads health and
collects usage; nodes and gateways when they route and refuse. Usage paths live with
the usage contract (``shared.usage``) and are re-exported here.
"""

from __future__ import annotations

from shared.usage import USAGE_ACK_PATH, USAGE_PATH

CONFIG_PATH = "/internal/config"
HEALTH_PATH = "/internal/health"
KNOWLEDGE_BASES_PATH = "/internal/knowledge-bases"
JOSE = "application/jose"
# The audience of what nodes and gateways sign for the control plane (health answers).
CONTROL_PLANE_AUDIENCE = "control-plane"

# Error codes a config push can be refused with (``error.code`` in the answer).
STALE_VERSION = "stale_version"
BAD_SIGNATURE = "bad_signature"
INVALID_CONFIG = "invalid_config"
WRONG_TARGET = "wrong_target"
CONFIG_EXPIRED = "config_expired"
CERTIFICATE_INVALID = "certificate_invalid"

__all__ = [
    "BAD_SIGNATURE",
    "CERTIFICATE_INVALID",
    "CONFIG_EXPIRED",
    "CONFIG_PATH",
    "CONTROL_PLANE_AUDIENCE",
    "HEALTH_PATH",
    "INVALID_CONFIG",
    "JOSE",
    "KNOWLEDGE_BASES_PATH",
    "STALE_VERSION",
    "USAGE_ACK_PATH",
    "USAGE_PATH",
    "WRONG_TARGET",
]
