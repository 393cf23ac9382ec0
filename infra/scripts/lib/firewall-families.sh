# shellcheck shell=bash
# Sourced by the firewall scripts (gateway-firewall.sh, node-firewall.sh): both address
# families, or a failure. On a host with IPv6 the same rules go into ip6tables; if they
# can't be loaded (ip6tables-restore missing or refusing), the IPv4 rules still load, and
# the script exits 1 saying so instead of "applied": IPv6 left open would undo the rules.

# Whether this host (this network namespace) has IPv6: the kernel has it, and an
# interface holds an IPv6 address or has IPv6 enabled, or new interfaces would get it
# (conf/default). Only when every one of those is disabled is IPv6 absent.
has_ipv6() {
  [[ -d /proc/sys/net/ipv6 ]] || return 1
  local line flag
  if [[ -r /proc/net/if_inet6 ]]; then
    while read -r line; do [[ -n $line ]] && return 0; done </proc/net/if_inet6
  fi
  for flag in /proc/sys/net/ipv6/conf/*/disable_ipv6; do
    [[ -r $flag && $(<"$flag") == 1 ]] || return 0
  done
  return 1
}

# The families whose rules can be there: for show and remove.
families() {
  echo 4
  if has_ipv6 && command -v ip6tables-restore >/dev/null; then echo 6; fi
}

tool() {  # tool FAMILY NAME -> iptables / ip6tables flavour of NAME
  if [[ $1 == 6 ]]; then echo "ip6${2}"; else echo "ip${2}"; fi
}

# load_families NAME LOADER: LOADER 4, then LOADER 6 on a host with IPv6; exits 1 with
# "NAME: NOT applied: <why>" when either can't be loaded. Sets V6_SUMMARY for the
# caller's "applied" line.
load_families() {
  local name=$1 loader=$2
  refuse() { printf '%s: NOT applied: %s\n' "$name" "$*" >&2; exit 1; }
  "$loader" 4 || refuse "the IPv4 rules could not be loaded (see iptables' message above)"
  # shellcheck disable=SC2034  # read by the caller
  V6_SUMMARY="IPv6: absent on this host, no rules needed"
  if has_ipv6; then
    if ! command -v ip6tables-restore >/dev/null; then
      refuse "this host has IPv6 but ip6tables-restore is not installed, so IPv6 is" \
        "unfiltered (IPv4 rules are loaded); install ip6tables or disable IPv6, then apply again"
    fi
    "$loader" 6 || refuse "this host has IPv6 but the IPv6 rules could not be loaded (see" \
      "ip6tables' message above), so IPv6 is unfiltered (IPv4 rules are loaded)"
    # shellcheck disable=SC2034
    V6_SUMMARY="IPv6 too"
  fi
}
