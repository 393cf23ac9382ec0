# shellcheck shell=bash
# Sourced by the firewall scripts: which address families get rules, failing closed.
#
#   families NAME   prints 4, and 6 when the host has IPv6; fails (2) naming NAME when
#                   the host has IPv6 but ip6tables-restore is missing, so a caller never
#                   reports rules "applied" while IPv6 is left open. Call it in a plain
#                   assignment (all=$(families x)) so that under `set -e` its failure
#                   stops the caller: in `for f in $(families x)` it would not.

host_has_ipv6() {
  [[ -s /proc/net/if_inet6 ]]
}

families() {
  local name=$1
  echo 4
  if host_has_ipv6; then
    if ! command -v ip6tables-restore >/dev/null; then
      printf '%s: this host has IPv6 but ip6tables-restore is missing: refusing to ' "$name" >&2
      printf 'leave IPv6 open (install iptables, or disable IPv6)\n' >&2
      exit 2
    fi
    echo 6
  fi
}

tool() {  # tool FAMILY NAME -> iptables / ip6tables flavour of NAME
  if [[ $1 == 6 ]]; then echo "ip6${2}"; else echo "ip${2}"; fi
}
