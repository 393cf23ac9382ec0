"""The gateway agent: applies the signed gateway config on a WireGuard gateway.

It runs on the gateway (``python -m data_plane.gateway serve``), never beside a model:
WireGuard peers with ``wg syncconf``, the nginx allow-map and upstreams (checked with
``nginx -t`` before reload), iptables through ``infra/scripts/gateway-firewall.sh``, and
a health report with each peer's latest handshake for the control plane.
"""
