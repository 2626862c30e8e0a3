# A throwaway PostgreSQL server for the shared-storage search test (tests/test_search_workers.py).
# Sourced by .ci/run; by hand: `source .ci/postgres.sh && pg_start`, then `make test`, then `pg_stop`.
# pg_start installs Debian's `postgresql` if it is missing, makes a cluster in a temp dir that
# listens on a unix socket there only (no TCP port to collide with), creates the database
# tunebook_test and exports TUNEBOOK_TEST_POSTGRES (its SQLAlchemy URL). initdb refuses to
# run as root, so as root the cluster belongs to the `postgres` user (or `nobody`).
pg_start() {
  local bin user
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [ -z "$bin" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -q postgresql >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql >/dev/null 2>&1; } || true
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  fi
  if [ -z "$bin" ]; then
    echo "PostgreSQL could not be installed: the PostgreSQL case of the search-worker test will fail" >&2
    return 0
  fi
  PG_DIR=$(mktemp -d -t tunebook-pg.XXXXXX)
  PG_AS=()
  if [ "$(id -u)" = 0 ]; then
    user=postgres; id -u postgres >/dev/null 2>&1 || user=nobody
    chown "$user" "$PG_DIR"
    PG_AS=(runuser -u "$user" --)
  fi
  PG_BIN=$bin
  "${PG_AS[@]}" "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 >"$PG_DIR/initdb.log" 2>&1 \
    || { cat "$PG_DIR/initdb.log" >&2; return 1; }
  # fsync off: a test database that dies with the run needs no crash safety.
  "${PG_AS[@]}" "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w \
    -o "-k $PG_DIR -c listen_addresses='' -c fsync=off" start >/dev/null \
    || { cat "$PG_DIR/server.log" >&2; return 1; }
  "${PG_AS[@]}" "$bin/createdb" -h "$PG_DIR" -U postgres tunebook_test
  export TUNEBOOK_TEST_POSTGRES="postgresql+psycopg://postgres@/tunebook_test?host=$PG_DIR"
  echo "$("$bin/postgres" --version) for the tests: $TUNEBOOK_TEST_POSTGRES"
}

pg_stop() {
  if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ]; then
    "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  [ -n "${PG_DIR:-}" ] && rm -rf "$PG_DIR"
  PG_DIR=
}
