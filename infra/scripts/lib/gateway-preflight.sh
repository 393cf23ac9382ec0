# shellcheck shell=bash
# Sourced by gateway-provision.sh: what it checks before it turns the firewall on, so the
# firewall neither guards an interface that is not there nor locks out the operator.
#
# gateway-firewall.sh drops everything on the public interface but UDP to the WireGuard
# port, lets only nginx's ports through on the tunnel interface and only replies on the
# backbone's; it leaves every other interface (the management link) alone. So:
#   - the public interface must exist: rules for a name that is not there filter
#     nothing, while the real public interface stays wide open;
#   - an SSH session that came in on one of those three interfaces loses SSH: a new
#     connection is dropped, and this one lives only as long as the connection tracker
#     keeps it. That is said before the firewall goes on, and needs a yes.
# Each function prints why it refuses on stderr and returns 1; the caller exits.

preflight_say() { printf 'gateway-provision: %s\n' "$*" >&2; }

# The interfaces of this machine (network namespace), space-separated.
interfaces() {
  local names=() name
  for name in /sys/class/net/*; do
    [[ -e $name ]] && names+=("${name##*/}")
  done
  printf '%s' "${names[*]}"
}

# require_interface NAME SETTING FILE: NAME (the value of SETTING in FILE) must exist here.
require_interface() {
  local name=$1 setting=$2 file=$3
  if [[ -n $name && -e /sys/class/net/$name ]]; then return 0; fi
  preflight_say "the public interface '$name' ($setting in $file) does not exist on" \
    "this machine, whose interfaces are: $(interfaces). Set it to the interface the" \
    "clients' WireGuard packets arrive on and run this again; the firewall was left as it was."
  return 1
}

# The interface the current SSH session arrived on: empty when this is not an SSH session,
# "?" when its address is on no interface this script can see.
ssh_interface() {
  [[ -n ${SSH_CONNECTION:-} ]] || return 0
  local server iface
  read -r _ _ server _ <<<"$SSH_CONNECTION"
  server=${server%%\%*}      # an IPv6 zone, if any
  server=${server#::ffff:}   # an IPv4 client on a dual-stack socket
  iface=$(ip -o address show to "$server" 2>/dev/null | awk 'NR == 1 { print $2 }')
  printf '%s' "${iface:-?}"
}

# ssh_stays_open ASSUME_YES PUBLIC_IF WG_PORT CLOSED_IF...: 0 when this is no SSH
# session, or one on an interface the firewall leaves alone; otherwise warn, and go on
# only with ASSUME_YES=1 or an interactive yes.
ssh_stays_open() {
  local assume_yes=$1 public=$2 wg_port=$3 iface closed
  shift 3
  iface=$(ssh_interface)
  [[ -n $iface ]] || return 0
  if [[ $iface != "?" ]]; then
    local at_risk=0
    for closed in "$public" "$@"; do
      if [[ -n $closed && $iface == "$closed" ]]; then at_risk=1; fi
    done
    ((at_risk)) || return 0
  fi
  local where="on $iface, which the firewall closes to SSH"
  if [[ $iface == "$public" ]]; then
    where="on $iface, the public interface (the firewall takes only UDP $wg_port there)"
  elif [[ $iface == "?" ]]; then
    where="on an interface this script cannot identify"
  fi
  preflight_say "WARNING: this SSH session came in $where. Once the firewall is on," \
    "SSH does not get through that interface: a new connection is dropped and this one" \
    "may be cut. Only interfaces other than the public, tunnel and backbone ones (the" \
    "management link) stay open to SSH: run this over one of those instead."
  if [[ $assume_yes == 1 ]]; then
    preflight_say "going on (--yes)"
    return 0
  fi
  if [[ -t 0 ]]; then
    local answer
    read -r -p "Turn the firewall on all the same? [y/N] " answer || answer=
    [[ $answer == [yY] || $answer == [yY][eE][sS] ]] && return 0
  fi
  preflight_say "the firewall was not turned on. Run this over the management link, or" \
    "with --yes to turn it on all the same."
  return 1
}
