#!/usr/bin/env bash
# Property-based API testing with schemathesis against openapi/openapi.yaml and a real server:
# every generated request — valid or not — must get a documented status and content type and
# never a 5xx; then the /v1 routes with a service token against the simulator, where invalid
# bodies must also be refused. Installs schemathesis into .venv-ci (PyPI) on first use. Bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-ci
if [ ! -x "$VENV/bin/st" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
fi

cargo build --quiet --bin sophia
BIN=target/debug/sophia
DATA=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export SOPHIA_DATA_DIR="$DATA" SOPHIA_PORT="$PORT" SOPHIA_BCRYPT_COST=4 SOPHIA_LOG=warn \
  SOPHIA_TOKEN_RATE_LIMIT_PER_ADDRESS=0 SOPHIA_TOKEN_RATE_LIMIT_PER_COMPANY=0
SIM_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" simulator --port "$SIM_PORT" --key sim-key-fuzz > "$DATA/sim.log" 2>&1 &
SIM_PID=$!
SOPHIA_ALLOW_LOCAL_UPSTREAMS=true "$BIN" > "$DATA/server.log" 2>&1 &
PID=$!
trap 'kill $PID $SIM_PID 2>/dev/null || true; wait $PID $SIM_PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for url in "http://127.0.0.1:$PORT/" "http://127.0.0.1:$SIM_PORT/"; do
  for _ in $(seq 1 200); do
    curl -fsS "$url" >/dev/null 2>&1 && break
    sleep 0.05
  done
done

ADMIN=$("$BIN" admin-token --role PLATFORM_ADMIN)
# One instance so that list/detail operations have something to find.
curl -fsS -X POST "http://127.0.0.1:$PORT/admin/agent-instances" \
  -H "authorization: Bearer $ADMIN" -H 'content-type: application/json' \
  -d '{"companyId":"fuzz","agentType":"SOPHIA","azureProjectId":"p"}' >/dev/null

"$VENV/bin/st" run openapi/openapi.yaml \
  --url "http://127.0.0.1:$PORT" \
  -H "Authorization: Bearer $ADMIN" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing \
  --max-time "${FUZZ_SECONDS:-90}" \
  --workers 1 \
  --no-color \
  --suppress-health-check all

# The OpenAI surface with a service token of a company whose model is the simulator: answers
# must match their schemas (streams included). (`--checks all` there also finds schema-valid
# requests SOPHIA refuses for reasons a schema cannot say — a tool_choice naming no tool.)
KEY=$(curl -fsS -X POST "http://127.0.0.1:$PORT/admin/agent-instances" \
  -H "authorization: Bearer $ADMIN" -H 'content-type: application/json' \
  -d "{\"companyId\":\"fuzz-v1\",\"agentType\":\"SOPHIA\",\"azureOpenaiEndpoint\":\"http://127.0.0.1:$SIM_PORT\",
       \"azureOpenaiDeployment\":\"gpt-4o\",\"azureEmbeddingDeployment\":\"text-embedding-3-small\",
       \"credentials\":{\"azureOpenaiKey\":\"sim-key-fuzz\"}}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["agentAccessKey"])')
TOKEN=$(curl -fsS -X POST "http://127.0.0.1:$PORT/agents/auth/token" \
  -d grant_type=client_credentials -d client_id=fuzz-v1 --data-urlencode "client_secret=$KEY" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
"$VENV/bin/st" run openapi/openapi.yaml \
  --url "http://127.0.0.1:$PORT" \
  -H "Authorization: Bearer $TOKEN" \
  --include-path-regex '^/v1/' \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing \
  --max-time "${FUZZ_V1_SECONDS:-60}" \
  --workers 1 \
  --no-color \
  --suppress-health-check all

if grep -q '"level":"ERROR"' "$DATA/server.log"; then
  echo "the server logged errors during fuzzing:" >&2
  grep '"level":"ERROR"' "$DATA/server.log" | head -20 >&2
  exit 1
fi
echo "schemathesis: 1 passed, 0 failed"
