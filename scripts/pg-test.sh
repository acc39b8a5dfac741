#!/usr/bin/env bash
# Start (or reuse) a throwaway PostgreSQL cluster for the test suite and print its URL.
# Usage: scripts/pg-test.sh start|stop
set -euo pipefail
DIR=${VOIDRUN_TEST_PGDIR:-/tmp/voidrun-test-pg}
PORT=${VOIDRUN_TEST_PGPORT:-54329}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$PGBIN" ] || { echo "PostgreSQL is not installed: apt-get install postgresql" >&2; exit 1; }
as_pg() { runuser -u postgres -- "$@"; }
case "${1:-start}" in
start)
  if ! as_pg "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
    if [ ! -f "$DIR/data/PG_VERSION" ]; then
      rm -rf "$DIR" && mkdir -p "$DIR" && chown postgres: "$DIR"
      as_pg "$PGBIN/initdb" -D "$DIR/data" -A trust -U voidrun -E UTF8 >/dev/null
    fi
    as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w -t 60 \
      -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
  fi
  echo "postgresql+asyncpg://voidrun@127.0.0.1:$PORT/postgres"
  ;;
stop)
  [ -f "$DIR/data/PG_VERSION" ] && as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null || true
  ;;
esac
