#!/usr/bin/env bash
# Sanctum gateway firewall: iptables and ip6tables rules, loaded atomically.
#
#   gateway-firewall.sh apply    load (or reload) the rules; safe to run again and again
#   gateway-firewall.sh show     print Sanctum's chains
#   gateway-firewall.sh remove   take Sanctum's chains out again
#
# The gateway agent runs `apply` after every config change (the WireGuard port or the
# interface names may have changed); the boot unit runs it before the network comes up.
#
# Policy:
#   public interface   drop everything but UDP to the WireGuard port (and replies to
#                      connections the gateway itself opened; IPv6 neighbour discovery)
#   tunnel interface   peers may reach nginx's port, nothing else on the gateway
#   forwarding         nothing is routed from or to the public or tunnel interface: a
#                      peer reaches the data plane only through nginx
# DROP, never REJECT: a scanner gets no answer at all, not even a reset.
#
# Both families, or a failure. On a host with IPv6 (the kernel has it and any interface,
# or the default for new ones, has it enabled) the same rules go into ip6tables; if they
# can't be loaded (ip6tables-restore missing or refusing), `apply` still loads IPv4, then
# exits 1 and says so instead of "applied": IPv6 left open would let anyone reach nginx
# and every other port around the IPv4 rules. Only a host without IPv6 is done with
# IPv4 alone, and `apply` says that IPv6 is absent.
#
# Sanctum keeps its rules in its own chains (SANCTUM-*), each reloaded in one
# iptables-restore transaction, and hooks them into INPUT and FORWARD with one jump each;
# other rules on the machine are left alone.
#
# Settings (environment; /etc/sanctum/gateway.env under systemd):
#   SANCTUM_GW_FIREWALL__PUBLIC_INTERFACE  public interface            (default eth0)
#   SANCTUM_GW_WG_INTERFACE                WireGuard interface         (default wg0)
#   SANCTUM_GW_WG_PORT                     WireGuard UDP port          (default 51820)
#   SANCTUM_GW_TUNNEL_PORTS                nginx's ports on the tunnel, comma-separated
#                                          (default SANCTUM_GW_HTTP_PORT, else 80)
#   SANCTUM_GW_BACKBONE_IF                 the backbone's interface, if the gateway is
#                                          on it: replies to the gateway's own
#                                          connections only (nodes never call it)
set -euo pipefail

PUBLIC_IF=${SANCTUM_GW_FIREWALL__PUBLIC_INTERFACE:-eth0}
WG_IF=${SANCTUM_GW_WG_INTERFACE:-wg0}
WG_PORT=${SANCTUM_GW_WG_PORT:-51820}
TUNNEL_PORTS=${SANCTUM_GW_TUNNEL_PORTS:-${SANCTUM_GW_HTTP_PORT:-80}}
IFS=, read -r -a NGINX_PORTS <<<"$TUNNEL_PORTS"
BACKBONE_IF=${SANCTUM_GW_BACKBONE_IF:-}
CHAINS=(SANCTUM-INPUT SANCTUM-PUBLIC SANCTUM-TUNNEL SANCTUM-BACKBONE SANCTUM-FORWARD)

die() { printf 'gateway-firewall: %s\n' "$*" >&2; exit 2; }
check_settings() {
  local name
  for name in "$PUBLIC_IF" "$WG_IF" ${BACKBONE_IF:+"$BACKBONE_IF"}; do
    [[ $name =~ ^[A-Za-z0-9_=+.-]{1,15}$ ]] || die "not an interface name: $name"
  done
  [[ $PUBLIC_IF != "$WG_IF" ]] || die "public and WireGuard interface are the same"
  local port
  ((${#NGINX_PORTS[@]} > 0)) || die "no tunnel port"
  for port in "$WG_PORT" "${NGINX_PORTS[@]}"; do
    if ! [[ $port =~ ^[0-9]{1,5}$ ]] || ((port < 1 || port > 65535)); then
      die "not a port: $port"
    fi
  done
}

# The rules for one family (4 or 6), in iptables-restore format. Declaring a chain in a
# --noflush restore empties it first, so the whole set is replaced in one transaction.
rules() {
  local family=$1
  printf '*filter\n'
  local chain
  for chain in "${CHAINS[@]}"; do printf ':%s - [0:0]\n' "$chain"; done
  cat <<EOF
-A SANCTUM-INPUT -i $PUBLIC_IF -j SANCTUM-PUBLIC
-A SANCTUM-INPUT -i $WG_IF -j SANCTUM-TUNNEL
EOF
  if [[ -n $BACKBONE_IF ]]; then
    printf -- '-A SANCTUM-INPUT -i %s -j SANCTUM-BACKBONE\n' "$BACKBONE_IF"
  fi
  cat <<EOF
-A SANCTUM-PUBLIC -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A SANCTUM-PUBLIC -m conntrack --ctstate INVALID -j DROP
-A SANCTUM-PUBLIC -p udp -m udp --dport $WG_PORT -j ACCEPT
EOF
  if [[ $family == 6 ]]; then
    # Without neighbour discovery the public IPv6 address stops answering WireGuard too.
    local type
    for type in neighbour-solicitation neighbour-advertisement router-advertisement; do
      printf -- '-A SANCTUM-PUBLIC -p ipv6-icmp -m icmp6 --icmpv6-type %s -m hl --hl-eq 255 -j ACCEPT\n' "$type"
    done
  fi
  cat <<EOF
-A SANCTUM-PUBLIC -j DROP
-A SANCTUM-TUNNEL -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A SANCTUM-TUNNEL -m conntrack --ctstate INVALID -j DROP
EOF
  for port in "${NGINX_PORTS[@]}"; do
    printf -- '-A SANCTUM-TUNNEL -p tcp -m tcp --dport %s -j ACCEPT\n' "$port"
  done
  cat <<EOF
-A SANCTUM-TUNNEL -j DROP
-A SANCTUM-BACKBONE -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A SANCTUM-BACKBONE -j DROP
-A SANCTUM-FORWARD -i $PUBLIC_IF -j DROP
-A SANCTUM-FORWARD -o $PUBLIC_IF -j DROP
-A SANCTUM-FORWARD -i $WG_IF -j DROP
-A SANCTUM-FORWARD -o $WG_IF -j DROP
EOF
  if [[ -n $BACKBONE_IF ]]; then
    printf -- '-A SANCTUM-FORWARD -%s %s -j DROP\n' i "$BACKBONE_IF" o "$BACKBONE_IF"
  fi
  cat <<EOF
COMMIT
EOF
}

# shellcheck source=infra/scripts/lib/firewall-families.sh
. "${BASH_SOURCE[0]%/*}/lib/firewall-families.sh"

ensure_jump() {
  local family=$1 from=$2 to=$3 ipt
  ipt=$(tool "$family" tables)
  "$ipt" -w -C "$from" -j "$to" 2>/dev/null || "$ipt" -w -I "$from" 1 -j "$to"
}

load() {  # load FAMILY: the rules and the two jumps, or a non-zero status
  local family=$1
  rules "$family" | "$(tool "$family" tables-restore)" -w --noflush || return 1
  ensure_jump "$family" INPUT SANCTUM-INPUT || return 1
  ensure_jump "$family" FORWARD SANCTUM-FORWARD || return 1
}

apply() {
  check_settings
  load_families gateway-firewall load
  printf 'gateway-firewall: applied (public %s: udp/%s only; tunnel %s: tcp/%s; %s)\n' \
    "$PUBLIC_IF" "$WG_PORT" "$WG_IF" "$TUNNEL_PORTS" "$V6_SUMMARY" >&2
}

show() {
  local family chain ipt
  for family in $(families); do
    ipt=$(tool "$family" tables)
    for chain in "${CHAINS[@]}"; do "$ipt" -w -S "$chain" 2>/dev/null || true; done
  done
}

remove() {
  local family chain ipt
  for family in $(families); do
    ipt=$(tool "$family" tables)
    while "$ipt" -w -D INPUT -j SANCTUM-INPUT 2>/dev/null; do :; done
    while "$ipt" -w -D FORWARD -j SANCTUM-FORWARD 2>/dev/null; do :; done
    for chain in "${CHAINS[@]}"; do "$ipt" -w -F "$chain" 2>/dev/null || true; done
    for chain in "${CHAINS[@]}"; do "$ipt" -w -X "$chain" 2>/dev/null || true; done
  done
}

case "${1:-}" in
  apply) apply ;;
  show) show ;;
  remove) remove ;;
  rules) check_settings; rules "${2:-4}" ;;
  *) echo "usage: $0 apply|show|remove|rules [4|6]" >&2; exit 2 ;;
esac
