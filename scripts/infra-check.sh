#!/usr/bin/env bash
# Checks infra/ offline (the Bicep compiler and the func CLI cannot be installed here):
# every .bicep parses (PyPI pycep-parser) with its modules wired right (scripts/infra_check.py),
# and checkov's Bicep checks report no failure (skips carry inline justifications).
# The cross-checks against the code (app settings, Cosmos containers, APIM routes, workbook)
# are Rust tests: cargo test --test api infra.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${SOPHIA_IAC_VENV:-${TMPDIR:-/tmp}/sophia-iac-venv}"
if [[ ! -x "$venv/bin/checkov" ]] || ! "$venv/bin/python" -c 'import pycep' 2>/dev/null; then
  echo "== installing pycep-parser and checkov into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'pycep-parser==0.5.1' 'checkov==3.3.30'
fi

echo "== parse and module wiring (pycep-parser)"
"$venv/bin/python" scripts/infra_check.py

echo "== checkov --framework bicep"
"$venv/bin/checkov" -d infra --framework bicep --skip-download --compact --quiet
