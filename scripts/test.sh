#!/usr/bin/env bash
# The whole test suite, as CI runs it: set up .venv, lint, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --dev
.venv/bin/ruff check .
.venv/bin/pytest "$@"
