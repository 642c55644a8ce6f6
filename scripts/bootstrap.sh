#!/usr/bin/env bash
# Create .venv at the repository root and install the project with its pinned dependencies.
# Idempotent and quick when nothing changed: the install is redone only when pyproject.toml changes.
#   bash scripts/bootstrap.sh          runtime dependencies
#   bash scripts/bootstrap.sh --dev    plus the test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

find_python() {
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      command -v "$candidate"; return
    fi
  done
}
python=$(find_python || true)
if [ -z "$python" ]; then
  echo "bootstrap: installing Python 3.11 from Debian" >&2
  apt-get update -qq && apt-get install -y -qq python3.11 python3.11-venv >/dev/null
  python=$(command -v python3.11)
fi

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $python" >&2
  "$python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi

stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)${extras:+-dev}"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing the project$extras into .venv (torch is large: this takes a few minutes once)" >&2
  .venv/bin/python -m pip install -q -e ".$extras"
  rm -f .venv/.installed-*
  touch "$stamp"
  # A --dev install also satisfies a plain one.
  [ -n "$extras" ] && touch "${stamp%-dev}"
fi

# The crawler renders pages with Chromium: Playwright's own browser when `playwright install chromium` has been
# run, else Debian's package (Playwright cannot download browsers on every network).
if ! ls "${PLAYWRIGHT_BROWSERS_PATH:-$HOME/.cache/ms-playwright}"/chromium-* >/dev/null 2>&1 \
   && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  echo "bootstrap: installing Debian's chromium for the crawler" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
