#!/usr/bin/env bash
# Schemathesis' CLI with all of its checks against a running Tunelab API (SQLite, the
# filesystem broker, no worker), as an outsider would run it: `make fuzz-live`.
# Slower and less repeatable than tests/security/test_fuzzing.py, which runs in `make test`;
# extra arguments go to `st run` (e.g. --max-examples 100).
set -euo pipefail
bin="$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin"
work="$(mktemp -d)"
port="$("$bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export TUNELAB_DATABASE_URL="sqlite:///$work/tunelab.db" TUNELAB_BROKER_FOLDER="$work/broker"
export TUNELAB_ARTIFACT_DIR="$work/artifacts" TUNELAB_DATA_DIR="$work/data"
# Limits out of the way, so the fuzzer explores the routes; tests of their own cover them.
export TUNELAB_REQUESTS_PER_MINUTE=1000000 TUNELAB_FAILED_AUTH_PER_MINUTE=1000000
export TUNELAB_MAX_CONCURRENT_JOBS=1000000 TUNELAB_WORKER_TOKEN="fuzz-$RANDOM"
"$bin/tunelab" db upgrade >/dev/null
key="$("$bin/tunelab" keys create fuzzer | grep -o 'tlk_[A-Za-z0-9_-]*' | head -1)"
"$bin/tunelab" api --port "$port" >"$work/api.log" 2>&1 &
api=$!
trap 'kill "$api" 2>/dev/null; wait "$api" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.5
done
"$bin/st" run "http://127.0.0.1:$port/openapi.json" --checks all \
    -H "Authorization: Bearer $key" --max-examples 30 --seed 1 "$@"
