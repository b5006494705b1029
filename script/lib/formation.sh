# A local pg_auto_failover formation (Debian's postgresql-15-auto-failover): a monitor and two PostgreSQL nodes
# with synchronous replication, every process on 127.0.0.1 and run as the postgres user, data under the git-ignored
# .pg/. Source this file (after postgres.sh), then: formation_up NAME BASE_PORT DBNAME; formation_down.
# The monitor listens on BASE_PORT, the nodes on BASE_PORT+1 and BASE_PORT+2.

formation_install() {
  command -v pg_autoctl >/dev/null && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "pg_autoctl not found: run 'sudo apt-get install -y postgresql-15-auto-failover' once." >&2
    return 1
  fi
  echo "Installing pg_auto_failover from Debian's packages..." >&2
  apt_install postgresql-15-auto-failover
}

# Every process of the formation carries this in its environment, so that all of them can be found and stopped.
# pg_autoctl's files live in the formation's folder, so formation_down removes them all. Its pid files above all:
# in /tmp/pg_autoctl by default, one left by a killed keeper refused the next start ("pg_autoctl is already
# running") whenever its pid had been reused by a process of the postgres user, as by a backend of the test cluster.
_formation_env() {
  echo "ASYNCORMAPI_FORMATION=$FORMATION_DIR XDG_CONFIG_HOME=$FORMATION_DIR/config XDG_DATA_HOME=$FORMATION_DIR/data XDG_RUNTIME_DIR=$FORMATION_DIR/run PATH=$(pg_bindir):/usr/bin:/bin"
}

_autoctl() { pg_as_owner env $(_formation_env) pg_autoctl "$@"; }

# formation_state_command: the pg_autoctl command that shows the formation's state, as a person pastes it into a shell
# (the formation's environment, and the postgres user when run as root).
formation_state_command() {
  local as=""
  [ "$(id -u)" -eq 0 ] && as="runuser -u postgres -- "
  echo "${as}env $(_formation_env) pg_autoctl show state --pgdata $FORMATION_DIR/monitor"
}

# _formation_pids [NODE]: the processes of the formation (of one node's keeper and server, given its name).
_formation_pids() {
  local p
  for p in /proc/[0-9]*; do
    { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qx "ASYNCORMAPI_FORMATION=$FORMATION_DIR" || continue
    [ -z "${1:-}" ] || { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -q -- "$FORMATION_DIR/$1\b" || continue
    echo "${p#/proc/}"
  done
}

# _formation_keeper NODE: runs that node's keeper (which runs its PostgreSQL) in the background, in a session of its own.
_formation_keeper() {
  pg_as_owner env $(_formation_env) setsid pg_autoctl run --pgdata "$FORMATION_DIR/$1" >>"$FORMATION_DIR/$1.log" 2>&1 &
}

# formation_state: one line per node, "name port current assigned".
formation_state() {
  _autoctl show state --pgdata "$FORMATION_DIR/monitor" --json 2>/dev/null | python3 -c '
import json, sys
try:
    for n in json.load(sys.stdin):
        print(n["nodename"], n["nodeport"], n["current_group_state"], n["assigned_group_state"])
except ValueError:
    pass'
}

# _formation_wait COUNT: until COUNT nodes are settled, one of them primary (or single) and the others secondary.
_formation_wait() {
  local tries=0 state
  while [ "$tries" -lt 240 ]; do
    # A line every 10 s while it settles: a first start (a base backup, then catching up) takes a minute or more.
    [ "$tries" -gt 0 ] && [ $((tries % 20)) -eq 0 ] &&
      echo "  still settling after $((tries / 2)) s: $(formation_state | awk '{ printf "%s %s/%s  ", $1, $3, $4 }')" >&2
    state=$(formation_state)
    if [ "$(grep -c . <<<"$state")" -ge "$1" ] && ! awk '$3 != $4 || $3 !~ /^(single|primary|secondary)$/ { bad = 1 } END { exit !bad }' <<<"$state" &&
       { [ "$1" -eq 1 ] || grep -q ' secondary secondary$' <<<"$state"; }; then
      return 0
    fi
    tries=$((tries + 1)); sleep 0.5
  done
  echo "The formation did not settle: $state" >&2
  return 1
}

# formation_dir NAME: sets FORMATION_DIR, the folder of the formation NAME (running or not).
formation_dir() {
  local root
  root=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
  FORMATION_DIR="$root/.pg/$1"
  # As root the formation belongs to 'postgres', which must reach the folder (as postgres.sh does for clusters).
  if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$root"; then
    FORMATION_DIR="/tmp/asyncormapi-pg-$(printf %s "$root" | md5sum | cut -c1-8)/$1"
  fi
  export FORMATION_DIR
}

# formation_switchover: a planned failover (pg_autoctl perform failover): the standby is promoted, the old primary
# follows it; returns once the formation has settled again.
formation_switchover() { _autoctl perform failover --pgdata "$FORMATION_DIR/monitor" --wait 120; }

formation_up() {
  local name=$1 base=$2 db=$3 i
  pg_install && formation_install || return 1
  formation_dir "$name"
  formation_down
  # pg_autoctl falls back to /tmp when XDG_RUNTIME_DIR names no folder.
  mkdir -p "$FORMATION_DIR/run"
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$FORMATION_DIR" "$FORMATION_DIR/run" "$(dirname "$FORMATION_DIR")"
  echo "Formation: the monitor on 127.0.0.1:$base..." >&2
  _autoctl create monitor --pgdata "$FORMATION_DIR/monitor" --pgport "$base" --hostname 127.0.0.1 --auth trust --no-ssl \
    >>"$FORMATION_DIR/create.log" 2>&1 || { tail -n 5 "$FORMATION_DIR/create.log" >&2; return 1; }
  _autoctl config set --pgdata "$FORMATION_DIR/monitor" postgresql.listen_addresses 127.0.0.1 >/dev/null 2>&1
  _formation_keeper monitor
  for i in $(seq 150); do "$(pg_bindir)/pg_isready" -q -h 127.0.0.1 -p "$base" && break; sleep 0.2; done
  # Seconds, not the defaults' 20 s before a node is unhealthy plus 30 s before a silent primary is demoted: a
  # crashed primary's standby takes writes again within 15 s (script/failover measures it).
  "$(pg_bindir)/psql" -h 127.0.0.1 -p "$base" -U postgres -d pg_auto_failover -XAtq \
    -c "ALTER SYSTEM SET pgautofailover.health_check_period = 1000" \
    -c "ALTER SYSTEM SET pgautofailover.health_check_timeout = 1000" \
    -c "ALTER SYSTEM SET pgautofailover.health_check_max_retries = 1" \
    -c "ALTER SYSTEM SET pgautofailover.health_check_retry_delay = 500" \
    -c "ALTER SYSTEM SET pgautofailover.node_considered_unhealthy_timeout = 3000" \
    -c "ALTER SYSTEM SET pgautofailover.primary_demote_timeout = 3000" \
    -c "SELECT pg_reload_conf()" >/dev/null
  for i in 1 2; do
    echo "Formation: node n$i on 127.0.0.1:$((base + i))$([ "$i" -eq 2 ] && echo ", a synchronous standby of n1 (a base backup first)")..." >&2
    # --listen: pg_autoctl's nodes listen on every address unless told otherwise.
    _autoctl create postgres --pgdata "$FORMATION_DIR/n$i" --pgport "$((base + i))" --listen 127.0.0.1 \
      --hostname 127.0.0.1 --auth trust --no-ssl --dbname "$db" --name "n$i" \
      --monitor "postgres://autoctl_node@127.0.0.1:$base/pg_auto_failover?sslmode=disable" \
      >>"$FORMATION_DIR/create.log" 2>&1 || { tail -n 5 "$FORMATION_DIR/create.log" >&2; return 1; }
    # GET /a/changes reads the primary's WAL through logical replication (pg_autoctl sets replica).
    grep -q "^wal_level" "$FORMATION_DIR/n$i/postgresql.auto.conf" 2>/dev/null ||
      echo "wal_level = 'logical'" | pg_as_owner tee -a "$FORMATION_DIR/n$i/postgresql.auto.conf" >/dev/null
    _formation_keeper "n$i"
    _formation_wait "$i" || return 1
  done
  echo "Formation: ready." >&2
  FORMATION_CONNECTION="Host=127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2));Database=$db;Username=postgres"
  export FORMATION_CONNECTION
}

# formation_crash PORT: kills the node on PORT as a power cut would: its keeper, its postmaster and every backend.
formation_crash() {
  local node
  node=$(formation_state | awk -v port="$1" '$2 == port { print $1 }')
  [ -n "$node" ] || { echo "no node on port $1" >&2; return 1; }
  local pids pid
  pids=$(_formation_pids "$node")
  [ -f "$FORMATION_DIR/$node/postmaster.pid" ] && pids="$pids $(head -n 1 "$FORMATION_DIR/$node/postmaster.pid")"
  for pid in $pids; do kill -9 -- "-$(ps -o pgid= -p "$pid" | tr -d ' ')" 2>/dev/null; kill -9 "$pid" 2>/dev/null; done
  return 0
}

# formation_restart NODE: runs a crashed node's keeper again; it rejoins as a standby by itself.
formation_restart() { _formation_keeper "$1"; }

formation_down() {
  [ -n "${FORMATION_DIR:-}" ] || return 0
  local tries
  for tries in 1 2 3 4 5; do
    local pids
    pids=$(_formation_pids)
    [ -n "$pids" ] || break
    kill -9 $pids 2>/dev/null
    sleep 0.3
  done
  rm -rf "$FORMATION_DIR"
}
