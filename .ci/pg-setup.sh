#!/usr/bin/env bash
# Starts a local PostgreSQL for the PostgreSQL store tests and prints its URL on stdout (the only
# line printed there; progress goes to stderr). Idempotent: installs PostgreSQL from the Debian
# packages when missing, creates and starts a cluster when none runs, creates the role and the
# database when missing. Run as root.
#
#   export MDM_TEST_POSTGRES_URL="$(bash .ci/pg-setup.sh)"
#
# The role may create databases and schemas: every store test works in a schema of its own, so
# the tests run in parallel against one database.
set -euo pipefail

ROLE="${MDM_PG_ROLE:-mdm}"
PASSWORD="${MDM_PG_PASSWORD:-mdm}"
DATABASE="${MDM_PG_DATABASE:-mdm_test}"
PORT="${MDM_PG_PORT:-5432}"

log() { echo "pg-setup: $*" >&2; }

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  log "installing postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q postgresql >&2
fi

# The newest installed major version.
VERSION="$(ls /usr/lib/postgresql | sort -n | tail -n 1)"

if ! pg_lsclusters -h 2>/dev/null | awk -v v="$VERSION" '$1 == v && $2 == "main"' | grep -q .; then
  log "creating cluster $VERSION/main"
  pg_createcluster "$VERSION" main --port "$PORT" >&2
fi
if ! pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" && $4 == "online"' | grep -q .; then
  log "starting cluster $VERSION/main"
  pg_ctlcluster "$VERSION" main start >&2
fi

# Wait until it accepts connections (a fresh start takes a moment).
for _ in $(seq 1 50); do
  if pg_isready -q -h 127.0.0.1 -p "$PORT"; then
    break
  fi
  sleep 0.2
done
pg_isready -h 127.0.0.1 -p "$PORT" >&2

psql_admin() { su postgres -c "psql -X -q -v ON_ERROR_STOP=1 -p $PORT $*"; }

if ! psql_admin "-tAc \"SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'\"" | grep -q 1; then
  log "creating role $ROLE"
  psql_admin "-c \"CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'\""
fi
if ! psql_admin "-tAc \"SELECT 1 FROM pg_database WHERE datname = '$DATABASE'\"" | grep -q 1; then
  log "creating database $DATABASE"
  psql_admin "-c \"CREATE DATABASE $DATABASE OWNER $ROLE\""
fi

# Many tests at once, each with a small pool: room for them.
MAX="$(psql_admin "-tAc 'SHOW max_connections'")"
if [ "${MAX:-0}" -lt 300 ]; then
  log "raising max_connections to 300 (restart)"
  psql_admin "-c 'ALTER SYSTEM SET max_connections = 300'"
  pg_ctlcluster "$VERSION" main restart >&2
  for _ in $(seq 1 50); do
    pg_isready -q -h 127.0.0.1 -p "$PORT" && break
    sleep 0.2
  done
fi

# Loopback only: no TLS (a debug-build TLS handshake costs ~0.1 s per connection; the store's TLS
# path has a test of its own that asks for it).
echo "postgres://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DATABASE?sslmode=disable"
