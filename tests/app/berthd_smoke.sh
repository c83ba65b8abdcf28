#!/usr/bin/env bash
# berthd as a process: starts on the fake driver and serves /health; a broken driver path gives one actionable
# line on stderr and a non-zero exit; --check-config validates and exits.
set -euo pipefail
berthd=$1 fake=$2
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$dir/berth.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
[store]
path = "$dir/berth.db"
[driver]
path = "$fake"
TOML
fail() { echo "FAIL: $*" >&2; exit 1; }

"$berthd" --config "$dir/berth.toml" --check-config | grep "is valid (driver fake" >/dev/null || fail "--check-config"

"$berthd" --config "$dir/berth.toml" 2>"$dir/log" &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >"$dir/health" 2>/dev/null && break; sleep 0.1; done
grep -q '"status":"ok"' "$dir/health" || fail "/health: $(cat "$dir/health" 2>/dev/null)"
grep -Eq 'driver.loaded name=fake version=[^ ]+ abi=1\.[0-9]+ path=' "$dir/log" || fail "no driver.loaded line"
kill -TERM "$pid"
wait "$pid" || fail "berthd exited non-zero on SIGTERM"
grep -q 'berthd.stopped' "$dir/log" || fail "no graceful stop"

sed -i "s#^path = \"$fake\"#path = \"$dir/missing.so\"#" "$dir/berth.toml"
set +e
"$berthd" --config "$dir/berth.toml" >"$dir/out" 2>"$dir/err"
rc=$?
set -e
[ "$rc" -ne 0 ] || fail "broken driver path exited 0"
[ "$(wc -l <"$dir/err")" -eq 1 ] || fail "expected one error line, got: $(cat "$dir/err")"
grep -q "cannot load driver $dir/missing.so: no such file" "$dir/err" || fail "unclear error: $(cat "$dir/err")"

printf '[driver]\nname = "fake"\n[server]\nthreds = 3\n' >"$dir/bad.toml"
set +e
"$berthd" --config "$dir/bad.toml" 2>"$dir/err"
rc=$?
set -e
[ "$rc" -eq 78 ] || fail "config error exit code $rc"
grep -q "bad.toml:4:10: server.threds: unknown key" "$dir/err" || fail "config error: $(cat "$dir/err")"
echo "berthd smoke: ok"
