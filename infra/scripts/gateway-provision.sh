#!/usr/bin/env bash
# Provision a Sanctum gateway on a fresh Debian machine. Safe to run again: every step
# checks first and leaves what is already in place.
#
#   sudo infra/scripts/gateway-provision.sh [--yes]
#
# It installs the packages, makes the directories, generates the gateway's WireGuard
# key pair (the private key never leaves this machine), writes /etc/sanctum/gateway.env
# from the example if there is none, turns forwarding off, installs the systemd units
# and starts them: firewall first, then the WireGuard interface, nginx and the agent.
# At the end it prints what to register in the control plane (docs/network.md).
#
# Before the firewall goes on for the first time it checks (lib/gateway-preflight.sh)
# that the public interface named in gateway.env exists, and refuses otherwise; and,
# run over SSH that came in on an interface the firewall closes (the public one, say),
# it says so and asks before going on. --yes answers that question with yes.
#
# Expects the Sanctum checkout (with its .venv, see scripts/setup.sh) at SANCTUM_HOME
# (default: the checkout this script is in). No secret is read from or written to the
# repository.
set -euo pipefail

SANCTUM_HOME=${SANCTUM_HOME:-$(cd "$(dirname "$0")/../.." && pwd)}
ETC=/etc/sanctum
ENV_FILE=$ETC/gateway.env
STATE=/var/lib/sanctum-gateway
UNIT_DIR=/etc/systemd/system
PACKAGES=(wireguard-tools nginx-light iptables iproute2 gzip)
UNITS=(sanctum-gateway-firewall.service sanctum-gateway-wireguard.service
       sanctum-gateway-nginx.service sanctum-gateway-agent.service
       sanctum-gateway-logrotate.service sanctum-gateway-logrotate.timer)

log() { printf '[gateway-provision] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# shellcheck source=infra/scripts/lib/gateway-preflight.sh
. "${BASH_SOURCE[0]%/*}/lib/gateway-preflight.sh"

ASSUME_YES=0
case "${1:-}" in
  --yes) ASSUME_YES=1 ;;
  "") ;;
  *) echo "usage: $0 [--yes]" >&2; exit 2 ;;
esac

[[ $(id -u) -eq 0 ]] || die "run as root"
[[ -x $SANCTUM_HOME/.venv/bin/python ]] || die "no $SANCTUM_HOME/.venv (run scripts/setup.sh python)"

packages() {
  local missing=() pkg
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  # The userspace implementation only where the kernel has no WireGuard module.
  if ! modprobe -n wireguard 2>/dev/null \
      && ! dpkg-query -W -f='${Status}' wireguard-go 2>/dev/null | grep -q "install ok installed"; then
    missing+=(wireguard-go)
  fi
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  # Our own nginx unit runs the gateway's config; the distribution's default site goes.
  if systemctl is-enabled --quiet nginx.service 2>/dev/null; then
    log "disabling the distribution's nginx.service (sanctum-gateway-nginx replaces it)"
    systemctl disable --now nginx.service
  fi
}

directories() {
  install -d -m 0755 "$ETC"
  install -d -m 0700 "$ETC/gateway" "$STATE" "$STATE/keys"
  install -d -m 0755 "$STATE/nginx" "$STATE/nginx/log"
  install -d -m 0700 "$STATE/nginx/tmp"
}

environment_file() {
  if [[ ! -e $ENV_FILE ]]; then
    sed "s|/opt/sanctum|$SANCTUM_HOME|g" "$SANCTUM_HOME/infra/env/gateway.env.example" \
      >"$ENV_FILE"
    chmod 0644 "$ENV_FILE"
    log "wrote $ENV_FILE from the example: set the gateway name and interfaces in it"
  fi
  set -a
  # shellcheck source=/dev/null  # the operator's env file (from infra/env/gateway.env.example)
  . "$ENV_FILE"
  set +a
}

wireguard_key() {
  local key=${SANCTUM_GW_WIREGUARD__PRIVATE_KEY:-$ETC/gateway/wireguard.key}
  if [[ ! -s $key ]]; then
    (umask 077 && wg genkey >"$key.tmp" && mv "$key.tmp" "$key")
    log "generated the WireGuard key pair ($key, 0600)"
  fi
  chmod 0600 "$key"
  WG_PUBLIC_KEY=$(wg pubkey <"$key")
}

signing_key() {
  local key=${SANCTUM_GW_SIGNING_KEY:-$ETC/gateway/gateway.key}
  if [[ ! -s $key ]]; then
    "$SANCTUM_HOME/.venv/bin/sanctum" keys generate --role gateway --out "$(dirname "$key")" >/dev/null
    log "generated the gateway's Ed25519 key pair ($key, 0600)"
  fi
  SIGNING_PUBLIC_KEY=$(<"${key%.key}.pub")
}

# Nothing has turned the firewall on yet: check it guards a real interface and will not
# lock out the session this runs in. A firewall already on was checked when it went on.
preflight() {
  require_interface "${SANCTUM_GW_FIREWALL__PUBLIC_INTERFACE:-eth0}" \
    SANCTUM_GW_FIREWALL__PUBLIC_INTERFACE "$ENV_FILE" || exit 1
  if ! systemctl is-active --quiet sanctum-gateway-firewall.service; then
    ssh_stays_open "$ASSUME_YES" "${SANCTUM_GW_FIREWALL__PUBLIC_INTERFACE:-eth0}" \
      "${SANCTUM_GW_WG_PORT:-51820}" "${SANCTUM_GW_WG_INTERFACE:-wg0}" \
      "${SANCTUM_GW_BACKBONE_IF:-}" || exit 1
  fi
}

control_plane_key() {
  local keys=${SANCTUM_GW_TRUST_KEYS:-$ETC/gateway/control-plane-keys.json}
  if [[ ! -s $keys ]]; then
    log "copy the control plane's published key set to $keys before starting the agent"
    return 1
  fi
}

kernel_settings() {
  # A gateway routes nothing: peers reach the data plane only through nginx.
  cat >/etc/sysctl.d/60-sanctum-gateway.conf <<'EOF'
# Sanctum gateway (gateway-provision.sh): no forwarding, strict reverse-path filter.
net.ipv4.ip_forward = 0
net.ipv6.conf.all.forwarding = 0
net.ipv4.conf.all.rp_filter = 1
net.ipv4.conf.default.rp_filter = 1
net.ipv4.tcp_syncookies = 1
EOF
  sysctl -q --system
}

units() {
  local unit changed=0
  for unit in "${UNITS[@]}"; do
    local rendered
    rendered=$(sed "s|/opt/sanctum|$SANCTUM_HOME|g" "$SANCTUM_HOME/infra/systemd/$unit")
    if [[ ! -e $UNIT_DIR/$unit ]] || [[ $rendered != "$(<"$UNIT_DIR/$unit")" ]]; then
      printf '%s\n' "$rendered" >"$UNIT_DIR/$unit"
      changed=1
    fi
  done
  if ((changed)); then systemctl daemon-reload; fi
  systemctl enable --now sanctum-gateway-firewall.service sanctum-gateway-wireguard.service \
    sanctum-gateway-nginx.service sanctum-gateway-logrotate.timer
}

packages
directories
environment_file
preflight
wireguard_key
signing_key
kernel_settings
units
if control_plane_key; then
  systemctl enable --now sanctum-gateway-agent.service
  agent="running"
else
  agent="waiting for the control plane's published key set"
fi

cat <<EOF

Sanctum gateway provisioned (agent: $agent).
Register it in the control plane (admin: Network > Gateways, or POST /api/gateways/):
  name                 ${SANCTUM_GW_NAME:-gateway-1}
  WireGuard public key $WG_PUBLIC_KEY
  signing key (PEM)
$SIGNING_PUBLIC_KEY
  public endpoint      <this machine's public address>:${SANCTUM_GW_WG_PORT:-51820}
  management URL       http://${SANCTUM_GW_LISTEN__HOST:-127.0.0.1}:${SANCTUM_GW_LISTEN__PORT:-8003}
EOF
