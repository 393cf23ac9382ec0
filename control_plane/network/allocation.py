"""Tunnel address allocation: a pure function over a pool and the addresses in use.

No database here: :func:`allocate` takes the network and what is taken, and answers the
lowest free host address or raises :class:`PoolExhausted`. The service that calls it
holds the pool's row lock inside a transaction, and a unique constraint on
(pool, address) stands behind both.

What is never handed out: the network address; in IPv4 the broadcast address; and
whatever the caller reserves (the gateway's own tunnel address).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# A pool must hold the gateway and at least one peer: /30 in IPv4 (network, gateway,
# one peer, broadcast), /126 in IPv6 (subnet-router anycast, gateway, two peers).
MAX_PREFIX = {4: 30, 6: 126}


class PoolExhausted(Exception):
    """Every address of the pool is taken (the API answers 409)."""

    def __init__(self, network: IPNetwork) -> None:
        super().__init__(f"address pool {network} is exhausted")
        self.network = network


def gateway_address(network: IPNetwork) -> IPAddress:
    """The gateway's own tunnel address: the pool's first host address."""
    return network.network_address + 1


def reserved_addresses(network: IPNetwork) -> set[IPAddress]:
    """Addresses no peer may have: network, broadcast (IPv4), the gateway's."""
    reserved: set[IPAddress] = {network.network_address, gateway_address(network)}
    if network.version == 4:
        reserved.add(network.broadcast_address)
    return reserved


def allocate(
    network: IPNetwork,
    used: Iterable[str | IPAddress],
    reserved: Iterable[str | IPAddress] = (),
) -> IPAddress:
    """The lowest address of ``network`` that is neither reserved nor used.

    Runs in O(taken) steps whatever the size of the pool (an IPv6 /64 included): it
    walks up from the first host address past the taken ones only.
    """
    taken = {ipaddress.ip_address(a) for a in used}
    taken |= {ipaddress.ip_address(a) for a in reserved}
    taken |= reserved_addresses(network)
    taken = {a for a in taken if a in network}
    candidate = network.network_address
    last = network.broadcast_address
    while candidate in taken:
        # As integers: both are addresses of ``network``, which the union type can't say.
        if int(candidate) >= int(last):
            raise PoolExhausted(network)
        candidate += 1
    return candidate
