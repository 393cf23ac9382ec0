"""WireGuard ingress: gateways, address pools, client peers and gateway config rollout.

A client reaches Sanctum only through a WireGuard tunnel to a gateway. This app keeps
the gateways and their address pools, provisions each client's peer (tunnel address,
keys, preshared key, the wg-quick file and its QR code), enables, disables and expires
peers, and builds the signed gateway config that Celery pushes to each gateway's agent
(through ``control_plane.core.rollout``, shared with nodes; ``rollout.GATEWAYS`` plugs in
what is a gateway's).
"""
