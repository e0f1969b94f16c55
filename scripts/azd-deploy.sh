#!/usr/bin/env bash
# azd hooks (azure.yaml). `check` (preprovision): the admin identity provider settings the
# template requires are in the azd environment. `deploy` (postprovision): package (scripts/
# package.sh) and zip-deploy to the Function App the template created; azd passes the
# template's outputs (SOPHIA_FUNCTION_APP, …) and AZURE_RESOURCE_GROUP as environment variables.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  check)
    missing=()
    for v in SOPHIA_ADMIN_JWKS_URL SOPHIA_ADMIN_ISSUER SOPHIA_ADMIN_AUDIENCE; do
      [[ -n "${!v:-}" ]] || missing+=("$v")
    done
    if (( ${#missing[@]} )); then
      echo "set the admin identity provider first, e.g.:" >&2
      for v in "${missing[@]}"; do echo "  azd env set $v <value>" >&2; done
      echo "(README: Deploy to Azure)" >&2
      exit 1
    fi
    ;;
  deploy)
    : "${AZURE_RESOURCE_GROUP:?azd sets AZURE_RESOURCE_GROUP}"
    : "${SOPHIA_FUNCTION_APP:?SOPHIA_FUNCTION_APP (a template output) is missing: provision first}"
    bash scripts/package.sh
    az functionapp deployment source config-zip \
      --resource-group "$AZURE_RESOURCE_GROUP" \
      --name "$SOPHIA_FUNCTION_APP" \
      --src dist/sophia-functions.zip
    echo "SOPHIA: ${SOPHIA_PUBLIC_URL:-https://$SOPHIA_FUNCTION_APP.azurewebsites.net}/health"
    ;;
  *)
    echo "usage: scripts/azd-deploy.sh check|deploy" >&2
    exit 2
    ;;
esac
