"""Where a listener may bind in plaintext.

Production refuses a plaintext listener on any address but loopback, unless what
carries it is encrypted below HTTP (the client API on the backbone's WireGuard).
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """``host`` (an address or ``localhost``) is only reachable from this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
