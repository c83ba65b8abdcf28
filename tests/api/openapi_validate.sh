#!/usr/bin/env bash
# openapi_validate.sh BERTHD FAKE_DRIVER NPM_DIR: berthd's GET /openapi.json passes a real OpenAPI 3.1 validator
# (@apidevtools/swagger-parser from NPM_DIR, installed by scripts/install-npm-tools), and the validator is shown to
# refuse a document that is not valid (so a pass means something).
set -euo pipefail
berthd=$1 fake=$2 npm_dir=$3
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$dir/berth.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
[store]
path = "$dir/berth.db"
[driver]
path = "$fake"
[auth.keys]
"tenant-key-alice" = "alice"
TOML
fail() { echo "FAIL: $*" >&2; exit 1; }
"$berthd" --config "$dir/berth.toml" >"$dir/log" 2>&1 &
pid=$!
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.1; done
# Public like /health: no key needed even with [auth.keys] configured.
curl -sf "http://127.0.0.1:$port/openapi.json" -o "$dir/openapi.json" || fail "GET /openapi.json: $(cat "$dir/log")"
export BERTH_NPM_DIR=$npm_dir
node "$here/openapi-validator/validate.mjs" "$dir/openapi.json" || fail "the document is not valid OpenAPI"
# The same document with a response that has no description (required by OpenAPI 3.1) must be refused.
python3 - "$dir/openapi.json" "$dir/broken.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
del doc["paths"]["/health"]["get"]["responses"]["200"]["description"]
json.dump(doc, open(sys.argv[2], "w"))
PY
if node "$here/openapi-validator/validate.mjs" "$dir/broken.json" 2>"$dir/err"; then
  fail "the validator accepted a response without a description"
fi
echo "refused as expected: $(head -c 300 "$dir/err")"
