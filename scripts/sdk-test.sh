#!/usr/bin/env bash
# The official OpenAI Python and Node SDKs and LangChain against a real SOPHIA and the Azure OpenAI simulator,
# both started from the built binary the way a developer runs them. Installs openai, pytest and
# langchain-openai into .venv-ci (PyPI) and the npm `openai` package into tests/node (npm ci) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-ci
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import openai, pytest, langchain_openai' 2>/dev/null \
  || "$VENV/bin/pip" install --quiet --disable-pip-version-check 'openai>=1.40,<3' 'pytest>=8' 'langchain-openai>=0.3,<2'

cargo build --quiet --bin sophia
BIN=target/debug/sophia
DATA=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SIM_PORT=$(free_port)
PORT=$(free_port)
"$BIN" simulator --port "$SIM_PORT" --key sim-key-acme > "$DATA/sim.log" 2>&1 &
SIM_PID=$!
# The simulator's managed-identity endpoint gives the `foundry` company its own identity.
SOPHIA_DATA_DIR="$DATA" SOPHIA_PORT="$PORT" SOPHIA_BCRYPT_COST=4 SOPHIA_ALLOW_LOCAL_UPSTREAMS=true SOPHIA_LOG=warn \
  SOPHIA_AZURE_CREDENTIAL=managed_identity IDENTITY_ENDPOINT="http://127.0.0.1:$SIM_PORT/msi/token" IDENTITY_HEADER=sdk \
  "$BIN" > "$DATA/server.log" 2>&1 &
PID=$!
trap 'kill $PID $SIM_PID 2>/dev/null || true; wait $PID $SIM_PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for url in "http://127.0.0.1:$PORT/" "http://127.0.0.1:$SIM_PORT/"; do
  for _ in $(seq 1 200); do curl -fsS "$url" >/dev/null 2>&1 && break; sleep 0.05; done
done

ADMIN=$(SOPHIA_DATA_DIR="$DATA" "$BIN" admin-token --role PLATFORM_ADMIN)
KEY=$(curl -fsS -X POST "http://127.0.0.1:$PORT/admin/agent-instances" \
  -H "authorization: Bearer $ADMIN" -H 'content-type: application/json' \
  -d "{\"companyId\":\"acme\",\"agentType\":\"SOPHIA\",\"azureProjectId\":\"p\",
       \"azureOpenaiEndpoint\":\"http://127.0.0.1:$SIM_PORT\",\"azureOpenaiDeployment\":\"gpt-4o\",\"azureEmbeddingDeployment\":\"text-embedding-3-small\",
       \"credentials\":{\"azureOpenaiKey\":\"sim-key-acme\"}}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["agentAccessKey"])')
TOKEN=$(curl -fsS -X POST "http://127.0.0.1:$PORT/agents/auth/token" \
  -d grant_type=client_credentials -d client_id=acme --data-urlencode "client_secret=$KEY" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

# A second company on the `foundry` runtime: its agent in the simulator's Foundry project,
# provisioned on create; its knowledge synced into the agent's vector store by a refresh.
FKEY=$(curl -fsS -X POST "http://127.0.0.1:$PORT/admin/agent-instances" \
  -H "authorization: Bearer $ADMIN" -H 'content-type: application/json' \
  -d "{\"companyId\":\"globex\",\"agentType\":\"SOPHIA\",\"azureOpenaiDeployment\":\"gpt-4o\",
       \"azureProjectEndpoint\":\"http://127.0.0.1:$SIM_PORT/api/projects/globex\",
       \"settings\":{\"runtime\":\"foundry\",\"authMode\":\"managedIdentity\",
                   \"managedIdentityClientId\":\"67676767-6767-4676-8676-676767676767\"}}" \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["status"]=="ACTIVE", d; print(d["agentAccessKey"])')
FTOKEN=$(curl -fsS -X POST "http://127.0.0.1:$PORT/agents/auth/token" \
  -d grant_type=client_credentials -d client_id=globex --data-urlencode "client_secret=$FKEY" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
mkdir -p "$DATA/knowledge/globex"
echo "Globex support answers within four hours on working days." > "$DATA/knowledge/globex/support.md"
JOB=$(curl -fsS -X POST "http://127.0.0.1:$PORT/refresh" -H "authorization: Bearer $FTOKEN" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobId"])')
for _ in $(seq 1 200); do
  STATE=$(curl -fsS "http://127.0.0.1:$PORT/refresh/$JOB" -H "authorization: Bearer $FTOKEN" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
  case "$STATE" in succeeded) break ;; failed) echo "foundry refresh failed" >&2; exit 1 ;; esac
  sleep 0.05
done

SOPHIA_BASE_URL="http://127.0.0.1:$PORT" SOPHIA_TOKEN="$TOKEN" SOPHIA_FOUNDRY_TOKEN="$FTOKEN" \
  "$VENV/bin/python" -m pytest -q tests/python/test_openai_sdk.py tests/python/test_langchain.py \
  tests/python/test_foundry_sdk.py

[ -d tests/node/node_modules/openai ] || npm ci --no-audit --no-fund --prefix tests/node
SOPHIA_BASE_URL="http://127.0.0.1:$PORT" SOPHIA_TOKEN="$TOKEN" \
  node --test tests/node/sdk.test.mjs
