#!/usr/bin/env bash
# Sanctum: bring a WireGuard interface up at boot (or take it down): a gateway's clients'
# tunnel, or the backbone's interface on a gateway or a node.
#
#   wireguard-interface.sh up     create the interface, set its key and port, link up
#   wireguard-interface.sh down   delete it (every tunnel drops)
#
# The interface is made with the kernel module when there is one, otherwise with a
# userspace implementation (wireguard-go), as wg-quick does. It starts with no peers:
# the gateway agent adds them from the signed config with `wg syncconf`, and keeps the
# interface as it is from then on (no restart when peers change). On a node, the node
# process sets the backbone's peers the same way.
#
# Settings (environment; /etc/sanctum/gateway.env under systemd). The SANCTUM_WG_* names
# (INTERFACE, PORT, PRIVATE_KEY, ADDRESSES) win over the gateway's; the backbone units
# set them:
#   SANCTUM_GW_WG_INTERFACE             interface name              (default wg0)
#   SANCTUM_GW_WG_PORT                  UDP port                    (default 51820)
#   SANCTUM_GW_WIREGUARD__PRIVATE_KEY   private key file (0600)     (default
#                                       /etc/sanctum/gateway/wireguard.key)
#   SANCTUM_GW_WG_ADDRESSES             the gateway's tunnel addresses, comma-separated,
#                                       like 10.77.0.1/24,fd77::1/64 (optional: the agent
#                                       sets them from the config too)
#   WG_USERSPACE_IMPLEMENTATION         userspace fallback          (default wireguard-go)
set -euo pipefail

IFACE=${SANCTUM_WG_INTERFACE:-${SANCTUM_GW_WG_INTERFACE:-wg0}}
PORT=${SANCTUM_WG_PORT:-${SANCTUM_GW_WG_PORT:-51820}}
KEY_FILE=${SANCTUM_WG_PRIVATE_KEY:-${SANCTUM_GW_WIREGUARD__PRIVATE_KEY:-/etc/sanctum/gateway/wireguard.key}}
ADDRESSES=${SANCTUM_WG_ADDRESSES:-${SANCTUM_GW_WG_ADDRESSES:-}}
USERSPACE=${WG_USERSPACE_IMPLEMENTATION:-wireguard-go}

die() { printf 'wireguard-interface: %s\n' "$*" >&2; exit 1; }

exists() { ip link show dev "$IFACE" >/dev/null 2>&1; }

create() {
  if ip link add dev "$IFACE" type wireguard 2>/dev/null; then
    echo "wireguard-interface: $IFACE created (kernel module)" >&2
    return
  fi
  command -v "$USERSPACE" >/dev/null || die "no kernel module and no $USERSPACE"
  echo "wireguard-interface: no kernel module; starting $USERSPACE for $IFACE" >&2
  # wireguard-go refuses to run on Linux unless told this is a choice.
  WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 "$USERSPACE" "$IFACE"
  local i
  for i in $(seq 50); do
    exists && return
    sleep 0.1
    : "$i"
  done
  die "$USERSPACE did not create $IFACE"
}

up() {
  [[ $IFACE =~ ^[A-Za-z0-9_=+.-]{1,15}$ ]] || die "not an interface name: $IFACE"
  [[ -r $KEY_FILE ]] || die "no private key at $KEY_FILE (gateway-provision.sh makes one)"
  local mode
  mode=$(stat -c %a "$KEY_FILE")
  [[ $mode == 600 || $mode == 400 ]] || die "$KEY_FILE must be mode 0600, not $mode"
  exists || create
  wg set "$IFACE" private-key "$KEY_FILE" listen-port "$PORT"
  local address
  if [[ -n $ADDRESSES ]]; then
    IFS=, read -r -a list <<<"$ADDRESSES"
    for address in "${list[@]}"; do
      ip address replace "$address" dev "$IFACE"
    done
  fi
  ip link set dev "$IFACE" up
  printf 'wireguard-interface: %s up on udp/%s, public key %s\n' \
    "$IFACE" "$PORT" "$(wg show "$IFACE" public-key)" >&2
}

down() {
  if exists; then ip link del dev "$IFACE"; fi
  # A userspace implementation exits when its interface goes; its socket may linger.
  rm -f "/var/run/wireguard/$IFACE.sock"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
