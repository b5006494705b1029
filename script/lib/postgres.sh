# Shared by script/server, script/test and script/bench: one way to get a local PostgreSQL.
# A throwaway cluster of the installed PostgreSQL server, in a git-ignored folder of the checkout,
# listening on 127.0.0.1 only with trust auth. Source this file, then call pg_up NAME PORT.

pg_bindir() { pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

# apt_install PACKAGE...: installs Debian's packages (as root), waiting up to ten minutes for the package lock when another
# apt-get or unattended-upgrades holds it, and saying so, instead of failing at once.
apt_install() {
  local waited=0 out
  while :; do
    if out=$({ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } 2>&1 >/dev/null); then
      return 0
    fi
    if ! grep -q "Could not get lock\|Unable to acquire the dpkg frontend lock\|Unable to lock" <<<"$out"; then
      printf '%s\n' "$out" >&2
      return 1
    fi
    [ "$waited" -eq 0 ] && echo "Waiting for Debian's package lock (another apt-get or dpkg holds it) to install $*..." >&2
    [ "$waited" -ge 600 ] && { echo "Debian's package lock was still held after 600 s: $out" >&2; return 1; }
    sleep 5; waited=$((waited + 5))
  done
}

# Installs Debian's PostgreSQL server when it is missing (as root; a normal user is told what to run).
pg_install() {
  if [ -x "$(pg_bindir)/initdb" ]; then return 0; fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "PostgreSQL server not found: run 'sudo apt-get install -y postgresql' once." >&2
    return 1
  fi
  echo "Installing PostgreSQL from Debian's packages..." >&2
  apt_install postgresql || return 1
  # Debian's package starts its own cluster on 5432; ours does not need it.
  command -v pg_ctlcluster >/dev/null && pg_lsclusters -h 2>/dev/null | while read -r v c _; do
    pg_ctlcluster "$v" "$c" stop 2>/dev/null || true; done
  [ -x "$(pg_bindir)/initdb" ]
}

# Runs a server program as the cluster's owner: initdb and postgres refuse to run as root.
pg_as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_up NAME PORT [WAL_LEVEL]: starts (creating if needed) the cluster NAME on PORT and sets PGDATA_DIR and
# PG_PORT. WAL_LEVEL is logical unless told otherwise (GET /a/changes needs it; the tests check a replica one too).
# PG_STARTED is 1 when this call started the server and 0 when it was already running: pg_down stops only the former,
# so a second script/server (or script/test beside a running one) never stops a cluster another command uses.
pg_up() {
  local name=$1 port=$2 wal_level=${3:-logical} bin root
  PG_STARTED=0
  pg_install || return 1
  bin=$(pg_bindir)
  root=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
  PGDATA_DIR="$root/.pg/$name"
  # As root the cluster belongs to 'postgres', which must be able to reach the folder; a checkout
  # under a private home folder is not, so the cluster then lives under /tmp instead.
  if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$root"; then
    PGDATA_DIR="/tmp/asyncormapi-pg-$(printf %s "$root" | md5sum | cut -c1-8)/$name"
  fi
  mkdir -p "$PGDATA_DIR"
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$PGDATA_DIR" && chmod 700 "$PGDATA_DIR"
  if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
    pg_as_owner "$bin/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null || return 1
  fi
  # The settings live in the cluster, so a plain 'pg_ctl start' (the outage tests) brings it back as it was.
  pg_as_owner tee "$PGDATA_DIR/postgresql.auto.conf" >/dev/null <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
logging_collector = off
# GET /a/changes reads the WAL through logical replication.
wal_level = $wal_level
CONF
  if pg_as_owner "$bin/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; then
    # Already running (a previous command of ours left it up); one from before the change feed restarts for wal_level,
    # and one on another port (before the ports moved) for its port: asked on the new port, it does not answer.
    if [ "$("$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -XAtqc 'show wal_level' 2>/dev/null)" != "$wal_level" ]; then
      pg_as_owner "$bin/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null && { pg_ctl_start || return 1; }
      PG_STARTED=1
    fi
  elif "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
    echo "Port $port is taken by another PostgreSQL (another checkout's?): stop it first." >&2
    return 1
  else
    pg_ctl_start || { tail -n 20 "$PGDATA_DIR/server.log" >&2; return 1; }
    PG_STARTED=1
  fi
  PG_PORT=$port
  export PGDATA_DIR PG_PORT PG_STARTED
}

pg_ctl_start() {
  # The fixed ports (15429-15447) lie below Linux's ephemeral range (32768-60999), so no client connection holds one
  # as its source port: they are free whenever no server of ours is on them.
  pg_as_owner "$(pg_bindir)/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/server.log" -w -t 60 start >/dev/null
}

# pg_down: stops the cluster pg_up started (PG_STARTED=1), and leaves one it found running to whoever started it.
pg_down() {
  [ "${PG_STARTED:-0}" = 1 ] && [ -n "${PGDATA_DIR:-}" ] && [ -f "$PGDATA_DIR/postmaster.pid" ] &&
    pg_as_owner "$(pg_bindir)/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null 2>&1
  return 0
}

# pg_createdb DB: creates database DB in the running cluster unless it exists.
pg_createdb() {
  local psql="$(pg_bindir)/psql -h 127.0.0.1 -p $PG_PORT -U postgres -XAtq"
  [ "$($psql -d postgres -c "select 1 from pg_database where datname = '$1'")" = 1 ] ||
    $psql -d postgres -c "create database \"$1\"" >/dev/null
}

pg_connection() { echo "Host=127.0.0.1;Port=$PG_PORT;Database=$1;Username=postgres"; }

# pg_test_clusters: the local clusters the tests use where no Docker engine answers, named for them in TEST_POSTGRES
# (.pg/test on 15430), TEST_POSTGRES_REPLICA (.pg/test-replica on 15432, wal_level=replica: GET /a/changes must answer 503
# there and the rest work) and TEST_POSTGRES_CTL (pg_ctl of the first, which the outage tests stop and start under the
# running API). script/test calls it, and so do the tests themselves when run by a plain 'dotnet test'.
pg_test_clusters() {
  local replica
  TEST_CLUSTER_DIRS=""
  pg_up test-replica 15432 replica || return 1
  replica=$PGDATA_DIR
  [ "$PG_STARTED" = 1 ] && TEST_CLUSTER_DIRS=$replica
  TEST_POSTGRES_REPLICA="$(pg_connection postgres)"
  pg_up test 15430 || return 1
  TEST_POSTGRES="$(pg_connection postgres)"
  TEST_POSTGRES_CTL="$(pg_bindir)/pg_ctl -D $PGDATA_DIR -l $PGDATA_DIR/server.log -w -t 60"
  [ "$(id -u)" -eq 0 ] && TEST_POSTGRES_CTL="runuser -u postgres -- $TEST_POSTGRES_CTL"
  [ "$PG_STARTED" = 1 ] && TEST_CLUSTER_DIRS="$TEST_CLUSTER_DIRS $PGDATA_DIR"
  export TEST_POSTGRES TEST_POSTGRES_REPLICA TEST_POSTGRES_CTL TEST_CLUSTER_DIRS
}

# pg_test_clusters_down: stops what pg_test_clusters started (the folders in TEST_CLUSTER_DIRS).
pg_test_clusters_down() {
  local dir
  for dir in ${TEST_CLUSTER_DIRS:-}; do PGDATA_DIR=$dir PG_STARTED=1 pg_down; done
}
