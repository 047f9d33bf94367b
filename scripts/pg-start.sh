#!/usr/bin/env bash
# Starts a throwaway PostgreSQL on 127.0.0.1 as a non-root user and prints the
# database URL. Used by .ci/run and by developers who want to run the
# PostgreSQL half of the test suite:
#
#   export QUNFA_TEST_POSTGRES_URL=$(scripts/pg-start.sh)
#
# Installs Debian's postgresql package when no server binaries are found.
set -euo pipefail
PORT="${QUNFA_PG_PORT:-55432}"
DIR="${QUNFA_PG_DIR:-/tmp/qunfa-pg}"
PGUSER_OS="${QUNFA_PG_OS_USER:-postgres}"

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bindir" ]; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) >&2
  else
    echo "PostgreSQL server binaries not found; install the postgresql package" >&2
    exit 1
  fi
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi

run() {
  if [ "$(id -u)" = 0 ]; then
    su "$PGUSER_OS" -s /bin/sh -c "$*"
  else
    sh -c "$*"
  fi
}

if [ "$(id -u)" = 0 ] && ! id "$PGUSER_OS" >/dev/null 2>&1; then
  useradd --system --home "$DIR" "$PGUSER_OS" >&2
fi

if ! run "$bindir/pg_isready -h 127.0.0.1 -p $PORT" >/dev/null 2>&1; then
  mkdir -p "$DIR"
  [ "$(id -u)" = 0 ] && chown "$PGUSER_OS" "$DIR"
  if [ ! -f "$DIR/data/PG_VERSION" ]; then
    run "$bindir/initdb -D $DIR/data -U qunfa --auth=trust -E UTF8 --locale=C.UTF-8" >&2
  fi
  run "$bindir/pg_ctl -D $DIR/data -l $DIR/log -w -o \"-h 127.0.0.1 -p $PORT -k $DIR -c fsync=on -c max_connections=200\" start" >&2
fi
echo "postgres://qunfa@127.0.0.1:$PORT/postgres"
