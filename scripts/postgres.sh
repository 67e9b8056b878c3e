#!/usr/bin/env bash
# A real PostgreSQL (Debian's package) for the tests, the demo and the benchmarks: a throwaway cluster
# in DIR, listening on 127.0.0.1:PORT, trust auth for the local user `labelaudit`, database `labelaudit`.
#
#   scripts/postgres.sh start DIR [PORT]   initdb DIR if new, start, wait until it accepts connections
#   scripts/postgres.sh stop DIR           fast shutdown
#   scripts/postgres.sh url DIR            print the store URL (postgresql://labelaudit@127.0.0.1:PORT/labelaudit)
#
# PostgreSQL refuses to run as root; as root the cluster runs as the `postgres` user the package creates.
set -euo pipefail
BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
[ -x "$BIN/initdb" ] || { echo "postgres: not installed (bash scripts/setup.sh installs Debian's postgresql)" >&2; exit 1; }
cmd="${1:-}"
DIR="${2:?usage: scripts/postgres.sh start|stop|url DIR [PORT]}"
mkdir -p "$DIR" && DIR="$(cd "$DIR" && pwd)"
PORT="${3:-$(cat "$DIR/port" 2>/dev/null || echo 5432)}"

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
  start)
    if [ ! -f "$DIR/data/PG_VERSION" ]; then
      mkdir -p "$DIR/data" "$DIR/run"
      [ "$(id -u)" -eq 0 ] && chown -R postgres: "$DIR"
      as_owner "$BIN/initdb" -D "$DIR/data" -U labelaudit -A trust -E UTF8 >"$DIR/initdb.log" 2>&1 \
        || { cat "$DIR/initdb.log" >&2; exit 1; }
      echo "$PORT" >"$DIR/port"
    fi
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/run/server.log" -w -t 60 \
      -o "-p $PORT -k $DIR/run -c listen_addresses=127.0.0.1" start >/dev/null
    as_owner "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U labelaudit -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = 'labelaudit'" | grep -q 1 \
      || as_owner "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U labelaudit labelaudit
    echo "postgres: serving on 127.0.0.1:$PORT (data in $DIR)"
    ;;
  stop) as_owner "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null && echo "postgres: stopped" ;;
  url) echo "postgresql://labelaudit@127.0.0.1:$PORT/labelaudit" ;;
  *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
