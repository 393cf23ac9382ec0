"""WireGuard keys and the client's config file, as both planes need them.

WireGuard keys are Curve25519 (X25519) keys written as standard base64 of 32 bytes, the
way ``wg genkey`` / ``wg pubkey`` / ``wg genpsk`` print them. ``cryptography``'s X25519
clamps the scalar the same way WireGuard does, so :func:`public_key` gives what
``wg pubkey`` gives.

:func:`render_client_config` writes the file a client brings its tunnel up with
(``wg-quick up sanctum.conf``, or any app that imports wg-quick files). The control plane
serves it for download and as a QR code; the end-to-end test applies the same text.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pydantic import AfterValidator

from shared.canonical import CanonicalEncodingError, b64decode_canonical

KEY_BYTES = 32
DEFAULT_PORT = 51820
DEFAULT_KEEPALIVE_SECONDS = 25
# Linux interface names: at most 15 bytes; wg-quick also wants the file named after it.
INTERFACE_NAME = re.compile(r"^[a-zA-Z0-9_=+.-]{1,15}$")
# What a config file's value may hold: no newline, no '#', nothing that starts a section.
_SAFE_VALUE = re.compile(r"^[^\r\n#\[\]]*$")


class WireGuardKeyError(ValueError):
    """A WireGuard key is not standard base64 of 32 bytes. Never quotes the key."""


def key_bytes(text: str, what: str = "WireGuard key") -> bytes:
    """The 32 raw bytes of a key in ``wg`` form (canonical standard base64)."""
    try:
        return b64decode_canonical(text, length=KEY_BYTES, what=what)
    except CanonicalEncodingError as exc:
        raise WireGuardKeyError(str(exc)) from None


def encode_key(raw: bytes) -> str:
    if len(raw) != KEY_BYTES:
        raise WireGuardKeyError(f"a WireGuard key is {KEY_BYTES} bytes")
    return base64.b64encode(raw).decode("ascii")


def _check_key(text: str) -> str:
    key_bytes(text)
    return text


WireGuardKey = Annotated[str, AfterValidator(_check_key)]
"""A WireGuard key (public, private or preshared) as ``wg`` prints it."""


def generate_private_key() -> str:
    """A new private key, like ``wg genkey``."""
    raw = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return encode_key(raw)


def generate_preshared_key() -> str:
    """A new preshared key, like ``wg genpsk``: 32 random bytes."""
    return encode_key(secrets.token_bytes(KEY_BYTES))


def private_key_object(private_key: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(key_bytes(private_key, "WireGuard private key"))


def public_key_object(public_key: str) -> X25519PublicKey:
    return X25519PublicKey.from_public_bytes(key_bytes(public_key, "WireGuard public key"))


def raw_public_key(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key(private_key: str) -> str:
    """The public key of ``private_key``, like ``wg pubkey``."""
    return encode_key(raw_public_key(private_key_object(private_key).public_key()))


def read_private_key(path: Path) -> str:
    """A private key from its file (as ``wg genkey`` wrote it). Raises
    :class:`WireGuardKeyError` naming the path, never the file's text."""
    try:
        text = path.read_text("ascii").strip()
        key_bytes(text, "WireGuard private key")
    except (OSError, UnicodeDecodeError, WireGuardKeyError):
        raise WireGuardKeyError(f"can't read a WireGuard private key at {path}") from None
    return text


def generate_key_pair() -> tuple[str, str]:
    """``(private_key, public_key)``."""
    private = generate_private_key()
    return private, public_key(private)


def _host_networks(addresses: Sequence[str], what: str) -> list[str]:
    """Normalise addresses to host networks (``10.0.0.2`` -> ``10.0.0.2/32``)."""
    out = []
    for text in addresses:
        try:
            net = ipaddress.ip_network(str(text), strict=True)
        except ValueError:
            raise ValueError(f"{what}: {text!r} is not an IP address or network") from None
        out.append(str(net))
    if not out:
        raise ValueError(f"{what}: at least one address is needed")
    return out


def render_client_config(
    *,
    addresses: Sequence[str],
    gateway_public_key: str,
    endpoint: str,
    allowed_ips: Sequence[str],
    private_key: str | None = None,
    preshared_key: str | None = None,
    persistent_keepalive: int | None = DEFAULT_KEEPALIVE_SECONDS,
    mtu: int | None = None,
    description: str = "",
) -> str:
    """The client's wg-quick config file.

    ``addresses`` are the client's tunnel addresses (host addresses, written as /32 and
    /128); ``allowed_ips`` are what the client routes into the tunnel: the gateway's own
    tunnel addresses, since nothing past the gateway is reachable anyway. ``private_key``
    is given only when the control plane generated the pair (the one time it is shown);
    when the client brought its own public key the file says where its private key goes
    and holds none. ``endpoint`` is ``host:port`` (``[v6]:port`` for IPv6).
    """
    gateway_public_key = encode_key(key_bytes(gateway_public_key, "gateway public key"))
    if preshared_key is not None:
        key_bytes(preshared_key, "preshared key")
    if private_key is not None:
        key_bytes(private_key, "private key")
    if not endpoint or not _SAFE_VALUE.match(endpoint) or ":" not in endpoint:
        raise ValueError("endpoint must be host:port")
    if not _SAFE_VALUE.match(description):
        raise ValueError("description must be one line without '#' or brackets")
    address_list = _host_networks(addresses, "addresses")
    allowed = _host_networks(allowed_ips, "allowed IPs")
    lines = []
    if description:
        lines.append(f"# {description}")
    lines.append("[Interface]")
    if private_key is not None:
        lines.append(f"PrivateKey = {private_key}")
    else:
        lines += [
            "# Your own key pair: its public half is registered with Sanctum and its",
            "# private key never left your machine. Add it here as `PrivateKey = ...`,",
            "# or keep it in a file and set `PostUp = wg set %i private-key /path/to/key`.",
        ]
    lines.append(f"Address = {', '.join(address_list)}")
    if mtu is not None:
        lines.append(f"MTU = {int(mtu)}")
    lines += ["", "[Peer]", f"PublicKey = {gateway_public_key}"]
    if preshared_key is not None:
        lines.append(f"PresharedKey = {preshared_key}")
    lines += [f"AllowedIPs = {', '.join(allowed)}", f"Endpoint = {endpoint}"]
    if persistent_keepalive:
        lines.append(f"PersistentKeepalive = {int(persistent_keepalive)}")
    return "\n".join(lines) + "\n"


def format_endpoint(host: str, port: int) -> str:
    """``host:port``, with IPv6 literals in brackets as wg expects."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"
