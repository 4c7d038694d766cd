#!/usr/bin/env bash
# Redis and PostgreSQL for the shared store, natively on this machine, each on its own port with
# its data under DIR. The tests start their services through this script; run-local.sh uses it
# for the whole topology.
#
#   deploy/services.sh start DIR REDIS_PORT PG_PORT   # both (installs them with apt when missing)
#   deploy/services.sh stop DIR                       # both
#   deploy/services.sh start-redis|stop-redis|start-postgres|stop-postgres DIR
#
# Prints REDIS_URL=… and POSTGRES_URL=… on start. Redis keeps no data on disk (it is a cache:
# the gateway rebuilds it from PostgreSQL). PostgreSQL refuses to run as root, so as root it
# runs as the `postgres` user (or a `router-pg` user created for it). Exit status 3: the
# services are missing and cannot be installed here.
set -euo pipefail

cmd=${1:?usage: services.sh start DIR REDIS_PORT PG_PORT | stop DIR}
dir=${2:?DIR missing}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif sudo -n true 2>/dev/null; then sudo -n "$@"; else return 1; fi
}

install() {
  echo "services.sh: installing $* with apt-get" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2 ||
    { as_root apt-get update >&2 && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2; } ||
    { echo "services.sh: cannot install $* (no root, no sudo, or no package mirror)" >&2; exit 3; }
}

pg_bin() {
  local found
  found=$(command -v initdb 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$found" ] && dirname "$(readlink -f "$found")"
}

# The user PostgreSQL runs as: ourselves, unless we are root.
pg_user() {
  if [ "$(id -u)" != 0 ]; then id -un; return; fi
  if id postgres >/dev/null 2>&1; then echo postgres; return; fi
  id router-pg >/dev/null 2>&1 || useradd --system --no-create-home router-pg
  echo router-pg
}

as_pg() {
  local user; user=$(pg_user)
  if [ "$user" = "$(id -un)" ]; then "$@"; else runuser -u "$user" -- "$@"; fi
}

start_redis() {
  local port=$1
  command -v redis-server >/dev/null || install redis-server
  mkdir -p "$dir/redis"
  echo "$port" > "$dir/redis.port"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/redis" --daemonize yes \
    --pidfile "$dir/redis/redis.pid" --logfile "$dir/redis/redis.log" \
    --save "" --appendonly no >&2
  for _ in $(seq 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.05
  done
  echo "REDIS_URL=redis://127.0.0.1:$port/0"
}

stop_redis() {
  [ -f "$dir/redis.port" ] || return 0
  redis-cli -p "$(cat "$dir/redis.port")" shutdown nosave >/dev/null 2>&1 || true
}

start_postgres() {
  local port=$1 bin
  bin=$(pg_bin) || true
  if [ -z "$bin" ]; then install postgresql; bin=$(pg_bin); fi
  echo "$port" > "$dir/pg.port"
  echo "$bin" > "$dir/pg.bin"
  mkdir -p "$dir/pg"
  chmod 755 "$dir"
  [ "$(id -u)" = 0 ] && chown "$(pg_user)" "$dir/pg"
  if [ ! -f "$dir/pg/data/PG_VERSION" ]; then
    as_pg "$bin/initdb" -D "$dir/pg/data" -U router --auth=trust -E UTF8 --no-instructions >"$dir/pg/initdb.log" 2>&1 ||
      { cat "$dir/pg/initdb.log" >&2; exit 1; }
  fi
  # fsync off: test data, and the gateway's own durability (its spool) is what is tested.
  as_pg "$bin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w -t 60 \
    -o "-p $port -k $dir/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >&2
  echo "POSTGRES_URL=postgres://router@127.0.0.1:$port/postgres"
}

stop_postgres() {
  [ -f "$dir/pg.bin" ] || return 0
  as_pg "$(cat "$dir/pg.bin")/pg_ctl" -D "$dir/pg/data" -m fast -w stop >&2 || true
}

case "$cmd" in
  start)
    start_redis "${3:?REDIS_PORT missing}"
    start_postgres "${4:?PG_PORT missing}"
    ;;
  stop) stop_redis; stop_postgres ;;
  start-redis) start_redis "${3:-$(cat "$dir/redis.port")}" ;;
  stop-redis) stop_redis ;;
  start-postgres) start_postgres "${3:-$(cat "$dir/pg.port")}" ;;
  stop-postgres) stop_postgres ;;
  *) echo "services.sh: unknown command $cmd" >&2; exit 2 ;;
esac
