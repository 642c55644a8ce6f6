#!/usr/bin/env bash
# Make sure the services the test suite talks to exist and run on this machine:
#   redis-server   installed (the tests start their own servers on free ports, so they may restart them)
#   nodejs, npm    installed (the extension's JavaScript is linted with ESLint)
#   strace         installed (a crawl test traces Chromium's network calls)
#   PostgreSQL     installed and answering on 127.0.0.1:5432 (the tests create and drop their own databases)
# Installs Debian packages only when missing; starts PostgreSQL only when it is down.
set -euo pipefail

apt_install() {
  echo "services: installing $* from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
}

command -v redis-server >/dev/null || apt_install redis-server
# The crawler's confinement test traces Chromium's network calls with strace.
command -v strace >/dev/null || apt_install strace
# The extension's lint (ESLint from the npm registry) needs Node.js and npm.
command -v npm >/dev/null || apt_install nodejs npm

pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! command -v pg_isready >/dev/null; then
  apt_install postgresql
fi
if ! pg_ready; then
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
  if [ -z "$version" ]; then
    apt_install postgresql
    version=$(ls /etc/postgresql | sort -V | tail -1)
  fi
  echo "services: starting PostgreSQL $version" >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
fi
if ! pg_ready; then
  echo "services: PostgreSQL does not answer on 127.0.0.1:5432" >&2
  exit 1
fi
# The tests connect as postgres without a password (SCANNER_TEST_POSTGRES overrides the URL): allow local trust
# for that role when the cluster was freshly installed with peer/md5 authentication.
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1 && [ -z "${SCANNER_TEST_POSTGRES:-}" ]; then
  hba=$(ls /etc/postgresql/*/main/pg_hba.conf | sort -V | tail -1)
  echo "services: allowing passwordless local connections for the test role in $hba" >&2
  sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
  version=$(ls /etc/postgresql | sort -V | tail -1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main reload
fi
