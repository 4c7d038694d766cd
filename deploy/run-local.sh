#!/usr/bin/env bash
# The compose.yaml topology natively on one machine: Redis and PostgreSQL (deploy/services.sh),
# two router-serve replicas on the shared store, and Prometheus scraping both when it is
# installed (Debian's `prometheus`). Everything lives under DIR (default target/tmp/local).
#
#   deploy/run-local.sh start [DIR]   # prints the replicas' and Prometheus's URLs
#   deploy/run-local.sh stop [DIR]
#
# Environment: ROUTER_ADMIN_KEY and ROUTER_DEMO_KEY (generated when unset and printed),
# NVIDIA_API_KEY for chat completions (without it /v1/route still answers).
set -euo pipefail

cmd=${1:-start}
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${2:-$root/target/tmp/local}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

stop() {
  for pid in "$dir"/*.pid; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
    rm -f "$pid"
  done
  "$root/deploy/services.sh" stop "$dir/services"
}

start() {
  (cd "$root" && cargo build -p router-serve)
  eval "$("$root/deploy/services.sh" start "$dir/services" "$(free_port)" "$(free_port)")"
  export ROUTER_REDIS_URL=$REDIS_URL ROUTER_POSTGRES_URL=$POSTGRES_URL
  export ROUTER_ADMIN_KEY=${ROUTER_ADMIN_KEY:-admin-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')}
  export ROUTER_DEMO_KEY=${ROUTER_DEMO_KEY:-sk-demo-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')}
  targets=()
  for name in a b; do
    port=$(free_port)
    mkdir -p "$dir/$name"
    sed -e "s|^listen = .*|listen = \"127.0.0.1:$port\"|" \
        -e "s|^router = .*|router = \"$root/models/llmrouter\"|" \
        -e "s|^dir = \"logs\"|dir = \"$dir/$name/logs\"|" \
        -e "s|^spool = .*|spool = \"$dir/$name/spool.jsonl\"|" \
        "$root/deploy/router.toml" > "$dir/$name/router.toml"
    "$root/target/debug/router-serve" --config "$dir/$name/router.toml" > "$dir/$name/server.log" 2>&1 &
    echo $! > "$dir/router-$name.pid"
    for _ in $(seq 600); do
      curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
      sleep 0.2
    done
    echo "replica $name: http://127.0.0.1:$port (log $dir/$name/server.log)"
    targets+=("\"127.0.0.1:$port\"")
  done
  if command -v prometheus >/dev/null; then
    port=$(free_port)
    printf 'global: {scrape_interval: 5s}\nscrape_configs:\n  - job_name: router-serve\n    static_configs:\n      - targets: [%s]\n' \
      "$(IFS=,; echo "${targets[*]}")" > "$dir/prometheus.yml"
    prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/prometheus" \
      --web.listen-address="127.0.0.1:$port" > "$dir/prometheus.log" 2>&1 &
    echo $! > "$dir/prometheus.pid"
    echo "prometheus: http://127.0.0.1:$port"
  fi
  echo "admin key: $ROUTER_ADMIN_KEY    client key: $ROUTER_DEMO_KEY"
  echo "stop with: deploy/run-local.sh stop $dir"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: run-local.sh start|stop [DIR]" >&2; exit 2 ;;
esac
