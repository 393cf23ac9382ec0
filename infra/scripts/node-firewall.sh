#!/usr/bin/env bash
# Sanctum data-plane node firewall: the client API answers the backbone only.
#
#   node-firewall.sh apply    load (or reload) the rules; safe to run again and again
#   node-firewall.sh show     print Sanctum's chain
#   node-firewall.sh remove   take Sanctum's chain out again
#
# The node's client API listens on its backbone address (docs/network.md); these rules
# drop every packet to that port that did not arrive on the backbone's WireGuard
# interface, so a host that reaches the node some other way (the management link, a
# misrouted LAN) gets nothing from it, not even a reset. The backbone in turn reaches
# that port and nothing else on the node (a gateway is not trusted with the management
# listener or any other service), and nothing is forwarded to or from it. Everything
# else on the node is left to the machine's own rules.
#
# Sanctum keeps its rules in its own chain (SANCTUM-NODE), loaded in one
# iptables-restore transaction and hooked into INPUT with one jump.
#
# Settings (environment; /etc/sanctum/data-plane.env under systemd):
#   SANCTUM_DP_LISTEN__API_PORT   the client API's port        (default 8000)
#   SANCTUM_NODE_BACKBONE_IF      the backbone interface       (default sanctum-bb)
set -euo pipefail

API_PORT=${SANCTUM_DP_LISTEN__API_PORT:-8000}
BACKBONE_IF=${SANCTUM_NODE_BACKBONE_IF:-sanctum-bb}
CHAIN=SANCTUM-NODE
FORWARD_CHAIN=SANCTUM-NODE-FORWARD

die() { printf 'node-firewall: %s\n' "$*" >&2; exit 2; }

check_settings() {
  [[ $BACKBONE_IF =~ ^[A-Za-z0-9_=+.-]{1,15}$ ]] || die "not an interface name: $BACKBONE_IF"
  if ! [[ $API_PORT =~ ^[0-9]{1,5}$ ]] || ((API_PORT < 1 || API_PORT > 65535)); then
    die "not a port: $API_PORT"
  fi
}

rules() {
  cat <<RULES
*filter
:$CHAIN - [0:0]
:$FORWARD_CHAIN - [0:0]
-A $CHAIN -i $BACKBONE_IF -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
-A $CHAIN -i $BACKBONE_IF -p tcp -m tcp --dport $API_PORT -j RETURN
-A $CHAIN -i $BACKBONE_IF -j DROP
-A $CHAIN -p tcp -m tcp --dport $API_PORT -j DROP
-A $FORWARD_CHAIN -i $BACKBONE_IF -j DROP
-A $FORWARD_CHAIN -o $BACKBONE_IF -j DROP
COMMIT
RULES
}

# shellcheck source=infra/scripts/lib/firewall-families.sh
. "${BASH_SOURCE[0]%/*}/lib/firewall-families.sh"

load() {  # load FAMILY: the rules and the jump, or a non-zero status
  local family=$1 ipt
  ipt=$(tool "$family" tables)
  rules | "$(tool "$family" tables-restore)" -w --noflush || return 1
  "$ipt" -w -C INPUT -j "$CHAIN" 2>/dev/null || "$ipt" -w -I INPUT 1 -j "$CHAIN" || return 1
  "$ipt" -w -C FORWARD -j "$FORWARD_CHAIN" 2>/dev/null \
    || "$ipt" -w -I FORWARD 1 -j "$FORWARD_CHAIN" || return 1
}

apply() {
  check_settings
  load_families node-firewall load
  printf 'node-firewall: applied (tcp/%s from %s only, and only that from it; %s)\n' "$API_PORT" "$BACKBONE_IF" \
    "$V6_SUMMARY" >&2
}

show() {
  local family
  local chain
  for family in $(families); do
    for chain in "$CHAIN" "$FORWARD_CHAIN"; do
      "$(tool "$family" tables)" -w -S "$chain" 2>/dev/null || true
    done
  done
}

remove() {
  local family ipt
  for family in $(families); do
    ipt=$(tool "$family" tables)
    while "$ipt" -w -D INPUT -j "$CHAIN" 2>/dev/null; do :; done
    while "$ipt" -w -D FORWARD -j "$FORWARD_CHAIN" 2>/dev/null; do :; done
    "$ipt" -w -F "$CHAIN" 2>/dev/null || true
    "$ipt" -w -X "$CHAIN" 2>/dev/null || true
    "$ipt" -w -F "$FORWARD_CHAIN" 2>/dev/null || true
    "$ipt" -w -X "$FORWARD_CHAIN" 2>/dev/null || true
  done
}

case "${1:-}" in
  apply) apply ;;
  show) show ;;
  remove) remove ;;
  rules) check_settings; rules ;;
  *) echo "usage: $0 apply|show|remove|rules" >&2; exit 2 ;;
esac
