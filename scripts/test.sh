#!/usr/bin/env bash
# The whole test suite, as CI runs it: set up .venv and the services (Redis, PostgreSQL), lint, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --dev
bash scripts/services.sh
.venv/bin/ruff check .
.venv/bin/pytest "$@"
