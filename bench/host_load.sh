#!/usr/bin/env bash
# host_load.sh [build-dir]: the host's own overhead, on the fake driver (no engine in the way).
#
# Starts berthd (fake driver, SQLite in a temp dir, warn-level logs) and measures with wrk (installed if missing):
#   1. GET /health                        throughput and latency, 50 connections, 10 s
#   2. POST .../python/exec on one ready  throughput and latency, 50 connections, 10 s
#   3. POST /v1/sandboxes                 throughput (each creates rows + a workspace volume), 8 connections, 10 s
#   4. berthd resident memory (VmRSS) at start, after the runs, and per 1000 sandboxes
# Prints a markdown table. Reproduce: scripts/test (to build), then bench/host_load.sh build.
set -euo pipefail
build=${1:-build}
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
cat >"$dir/berth.toml" <<TOML
[server]
listen = "127.0.0.1:0"
threads = 64
[store]
path = "$dir/berth.db"
[driver]
path = "$(realpath "$build/lib/berth/berth_driver_fake.so")"
[log]
level = "warn"
[cleanup]
enabled = false
TOML
"$build/bin/berthd" --config "$dir/berth.toml" 2>"$dir/log" &
pid=$!
# Port 0: the kernel picks a free port; read it back from the listening socket.
sleep 0.5
port=$(ss -ltnp 2>/dev/null | awk -v p="pid=$pid," '$0 ~ p {split($4, a, ":"); print a[length(a)]}' | head -1)
[ -n "$port" ] || { echo "could not find berthd's port" >&2; exit 1; }
base="http://127.0.0.1:$port"
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
rss_start=$(rss)

sb=$(curl -s -X POST "$base/v1/sandboxes" -d '{}' | sed 's/.*"id":"\([^"]*\)".*/\1/')
curl -s -X POST "$base/v1/sandboxes/$sb/python/exec" -d '{"code":"print(1+2)"}' >/dev/null
cat >"$dir/exec.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"code":"print(1+2)"}'
wrk.headers["Content-Type"] = "application/json"
LUA
cat >"$dir/create.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{}'
wrk.headers["Content-Type"] = "application/json"
LUA

row() { # row <name> <wrk output file>
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$2")
  p50=$(awk '$1 == "50%" {print $2}' "$2")
  p99=$(awk '$1 == "99%" {print $2}' "$2")
  echo "| $1 | $rps | $p50 | $p99 |"
}
wrk -t2 -c50 -d10s --latency "$base/health" >"$dir/health.txt"
wrk -t2 -c50 -d10s --latency -s "$dir/exec.lua" "$base/v1/sandboxes/$sb/python/exec" >"$dir/exec.txt"
wrk -t2 -c8 -d10s --latency -s "$dir/create.lua" "$base/v1/sandboxes" >"$dir/create.txt"
created=$(awk '/requests in/ {print $1}' "$dir/create.txt")
rss_end=$(rss)

echo "berthd host overhead on the fake driver, $(date -u '+%Y-%m-%d %H:%M') UTC, $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
echo "| measurement | requests/s | p50 | p99 |"
echo "|---|---|---|---|"
row "GET /health (50 conns)" "$dir/health.txt"
row "POST python/exec, ready sandbox (50 conns)" "$dir/exec.txt"
row "POST /v1/sandboxes (8 conns)" "$dir/create.txt"
grep -h "Non-2xx" "$dir"/*.txt | sed 's/^/non-2xx: /' || true
echo
echo "| memory | KiB |"
echo "|---|---|"
echo "| VmRSS at start | $rss_start |"
echo "| VmRSS after the runs ($created sandboxes created) | $rss_end |"
if [ "${created:-0}" -gt 0 ]; then
  echo "| growth per 1000 sandboxes | $(( (rss_end - rss_start) * 1000 / created )) |"
fi
