"""Validators for WireGuard keys, address pools and endpoints.

What travels in the gateway config must pass ``shared.gateway``'s contract; checking it
here gives the operator a field error instead of a failed rollout. Messages never quote
a key.
"""

from __future__ import annotations

import ipaddress
import re

from django.core.exceptions import ValidationError

from control_plane.network.allocation import MAX_PREFIX
from shared.wireguard import INTERFACE_NAME, WireGuardKeyError, key_bytes

_HOST = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def validate_wireguard_key(value: str) -> None:
    """A WireGuard public key as ``wg pubkey`` prints it (base64 of 32 bytes)."""
    try:
        key_bytes(value, "key")
    except WireGuardKeyError:
        raise ValidationError(
            "Enter a WireGuard public key: 44 characters of base64, as `wg pubkey` prints."
        ) from None


def _network(value: str, version: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise ValidationError(
            f"Enter an IPv{version} network in CIDR form, with no host bits set "
            f"(like {'10.77.0.0/24' if version == 4 else 'fd77::/64'})."
        ) from None
    if network.version != version:
        raise ValidationError(f"This is an IPv{network.version} network; IPv{version} is wanted.")
    if network.prefixlen > MAX_PREFIX[version]:
        raise ValidationError(
            f"A pool needs room for the gateway and a peer: /{MAX_PREFIX[version]} at most."
        )
    return network


def validate_ipv4_network(value: str) -> None:
    _network(value, 4)


def validate_ipv6_network(value: str) -> None:
    _network(value, 6)


def validate_endpoint(value: str) -> None:
    """``host:port`` or ``[v6]:port``: where clients send their WireGuard packets."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValidationError("Enter host:port, like gw1.example.net:51820.")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValidationError("Enter a valid IPv6 address in brackets.") from None
        return
    try:
        ipaddress.IPv4Address(host)
        return
    except ValueError:
        pass
    if not _HOST.match(host):
        raise ValidationError("Enter a host name or an IP address before the port.")


def validate_upstream_host(value: str) -> None:
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    if not _HOST.match(value):
        raise ValidationError("Enter an IP address or a host name.")


def validate_interface_name(value: str) -> None:
    if not INTERFACE_NAME.match(value):
        raise ValidationError("Use 1-15 of A-Z a-z 0-9 _ = + . - (a Linux interface name).")
