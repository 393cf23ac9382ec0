#!/usr/bin/env bash
# Rotate the gateway's nginx logs: *.log -> *.1 -> *.2.gz ... keeping KEEP old ones.
#
#   rotate-logs.sh [LOG_DIR] [KEEP]
#
# After moving the logs it asks nginx to reopen its files (USR1 to the master), then
# compresses the previous generation. Run daily by sanctum-gateway-logrotate.timer.
# The logs hold metadata only (tunnel address, route, status, sizes, timings): see the
# log_format in infra/nginx/gateway.conf.template. The planes log to the journal.
#
# Settings (environment; /etc/sanctum/gateway.env under systemd):
#   SANCTUM_GW_NGINX__LOG_DIR    log directory   (default /var/lib/sanctum-gateway/nginx/log)
#   SANCTUM_GW_NGINX__PID_FILE   nginx's pid file (default /var/lib/sanctum-gateway/nginx/nginx.pid)
#   SANCTUM_LOG_KEEP             generations kept (default 14)
set -euo pipefail

LOG_DIR=${1:-${SANCTUM_GW_NGINX__LOG_DIR:-/var/lib/sanctum-gateway/nginx/log}}
KEEP=${2:-${SANCTUM_LOG_KEEP:-14}}
PID_FILE=${SANCTUM_GW_NGINX__PID_FILE:-/var/lib/sanctum-gateway/nginx/nginx.pid}

die() { printf 'rotate-logs: %s\n' "$*" >&2; exit 2; }

[[ -d $LOG_DIR ]] || die "no log directory $LOG_DIR"
if ! [[ $KEEP =~ ^[0-9]+$ ]] || ((KEEP < 1)); then die "KEEP must be a positive number"; fi

shopt -s nullglob
rotated=0
for log in "$LOG_DIR"/*.log; do
  [[ -f $log ]] || continue
  # Oldest first: drop what falls off the end, shift the rest up by one.
  rm -f "$log.$KEEP.gz" "$log.$KEEP"
  for ((n = KEEP - 1; n >= 1; n--)); do
    if [[ -e $log.$n.gz ]]; then mv -f "$log.$n.gz" "$log.$((n + 1)).gz"; fi
    if [[ -e $log.$n ]]; then mv -f "$log.$n" "$log.$((n + 1))"; fi
  done
  mv -f "$log" "$log.1"
  : >"$log"
  rotated=$((rotated + 1))
done

# nginx still writes to the moved files until it reopens them.
if [[ -r $PID_FILE ]]; then
  pid=$(<"$PID_FILE")
  if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
    kill -USR1 "$pid"
    sleep 1
  fi
fi

# Compress every generation but the newest (nginx may still be finishing a line in it).
for old in "$LOG_DIR"/*.log.[0-9]*; do
  [[ $old == *.gz || $old == *.log.1 ]] && continue
  gzip -f "$old"
done
printf 'rotate-logs: %d log(s) rotated in %s, %d kept\n' "$rotated" "$LOG_DIR" "$KEEP" >&2
