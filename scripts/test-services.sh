#!/usr/bin/env bash
# The database service the control-plane tests run against a second time.
#   scripts/test-services.sh start         start the PostgreSQL cluster if it is down and
#                                          create the test role and database (idempotent)
#   scripts/test-services.sh database-url  print the DATABASE_URL for that database
# Redis is not here: tests that need it start their own redis-server on a free port.
# Runs as root (CI) or with sudo; the role is a local, test-only login on loopback.
set -euo pipefail

PG_VERSION=${SANCTUM_PG_VERSION:-15}
PG_CLUSTER=${SANCTUM_PG_CLUSTER:-main}
DB_ROLE=sanctum_cp_test
DB_NAME=sanctum_cp_test
DB_PASSWORD=sanctum_cp_test

log() { printf '[test-services] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}

cluster_field() {  # cluster_field N: column N of this cluster's pg_lsclusters line
  pg_lsclusters --no-header | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" -v n="$1" \
    '$1 == v && $2 == c { print $n }'
}

port() {
  local p
  p=$(cluster_field 3)
  [ -n "$p" ] || { log "no PostgreSQL cluster $PG_VERSION/$PG_CLUSTER"; return 1; }
  echo "$p"
}

psql_admin() {
  as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$(port)" -d postgres -Atc "$1"
}

start() {
  command -v pg_lsclusters >/dev/null || { log "PostgreSQL is not installed (make setup)"; exit 1; }
  if [ -z "$(cluster_field 1)" ]; then
    log "creating cluster $PG_VERSION/$PG_CLUSTER"
    as_root pg_createcluster "$PG_VERSION" "$PG_CLUSTER" >/dev/null
  fi
  if [ "$(cluster_field 4)" != "online" ]; then
    log "starting PostgreSQL $PG_VERSION/$PG_CLUSTER"
    as_root pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start
  fi
  local tries=0
  until as_postgres pg_isready -q -h 127.0.0.1 -p "$(port)"; do
    tries=$((tries + 1))
    [ "$tries" -lt 30 ] || { log "PostgreSQL did not come up"; exit 1; }
    sleep 1
  done
  if [ "$(psql_admin "SELECT 1 FROM pg_roles WHERE rolname = '$DB_ROLE'")" != "1" ]; then
    log "creating role $DB_ROLE"
    # CREATEDB: the test runner makes (and drops) its own test_$DB_NAME database.
    psql_admin "CREATE ROLE $DB_ROLE LOGIN CREATEDB PASSWORD '$DB_PASSWORD'"
  fi
  if [ "$(psql_admin "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != "1" ]; then
    log "creating database $DB_NAME"
    psql_admin "CREATE DATABASE $DB_NAME OWNER $DB_ROLE"
  fi
  log "PostgreSQL ready: $(database_url)"
}

database_url() {
  echo "postgresql://$DB_ROLE:$DB_PASSWORD@127.0.0.1:$(port)/$DB_NAME"
}

case "${1:-}" in
  start) start ;;
  database-url) database_url ;;
  *) echo "usage: $0 start|database-url" >&2; exit 2 ;;
esac
