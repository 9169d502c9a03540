#!/usr/bin/env bash
# Idempotent setup of everything the tests, the demo and (with --bench) the benchmarks
# need on a fresh Debian machine: PostgreSQL server binaries, the Python virtualenv, and
# a Toxiproxy server. Safe to run repeatedly; steps already done say "already present".
#
#   ./scripts/bootstrap.sh            # tests and demo
#   ./scripts/bootstrap.sh --bench    # also pgbouncer and pgpool2 for benchmarks/
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BENCH=0
for arg in "$@"; do
  case "$arg" in
    --bench) BENCH=1 ;;
    -h | --help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "bootstrap: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

# CI may run with a minimal environment; Go needs HOME for its caches.
export HOME="${HOME:-$(getent passwd "$(id -un)" | cut -d: -f6)}"
export DEBIAN_FRONTEND=noninteractive

say() { echo "bootstrap: $*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

APT_UPDATED=0
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    say "apt-get not found; install these packages by hand: $*" >&2
    return 1
  fi
  if [ "$APT_UPDATED" -eq 0 ]; then
    say "apt-get update"
    $SUDO apt-get update -qq </dev/null
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" </dev/null
}

have_pg_server() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || [ -n "${PGROUTER_PG_BINDIR:-}" ]
}

# ---------------------------------------------------------------- PostgreSQL
if have_pg_server; then
  say "postgresql server: already present"
else
  apt_install postgresql postgresql-contrib
  # Debian creates and starts a default cluster; we never use it.
  if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
      $SUDO pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
    done || true
  fi
  have_pg_server || { say "postgresql install did not provide initdb" >&2; exit 1; }
fi

if [ "$(id -u)" -eq 0 ] && ! getent passwd postgres >/dev/null; then
  say "creating the postgres OS user (PostgreSQL refuses to run as root)"
  useradd --system --no-create-home --shell /bin/sh postgres
fi

if [ "$BENCH" -eq 1 ]; then
  missing=()
  command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
  command -v pgpool >/dev/null 2>&1 || [ -x /usr/sbin/pgpool ] || missing+=(pgpool2)
  if [ "${#missing[@]}" -eq 0 ]; then
    say "pgbouncer, pgpool2: already present"
  else
    apt_install "${missing[@]}"
    # The packages start system services on their default ports; benchmarks run their own.
    for svc in pgbouncer pgpool2; do
      $SUDO service "$svc" stop >/dev/null 2>&1 || true
    done
  fi
fi

# ---------------------------------------------------------------- Python
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  say "$PYTHON not found; install Python >= 3.11 (apt-get install -y python3 python3-venv)" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  say "$("$PYTHON" --version 2>&1) is too old: pgrouter needs Python >= 3.11" >&2
  exit 1
fi

if [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
  say "virtualenv .venv: already present"
else
  say "creating virtualenv .venv with $("$PYTHON" --version 2>&1)"
  rm -rf .venv
  if ! "$PYTHON" -m venv .venv; then
    rm -rf .venv
    apt_install python3-venv
    "$PYTHON" -m venv .venv
  fi
fi

STAMP=.venv/.installed-stamp
if [ -f "$STAMP" ] && [ ! pyproject.toml -nt "$STAMP" ]; then
  say "python packages: already present"
else
  say "pip install -e '.[test,native]'"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,native]' </dev/null
  touch "$STAMP"
fi

# ---------------------------------------------------------------- Toxiproxy
toxiproxy_path() {
  .venv/bin/python -c \
    'from router.toxiproxy_server import find_toxiproxy_server as f; print(f() or "")'
}

found="$(toxiproxy_path)"
if [ -n "$found" ]; then
  say "toxiproxy server: already present ($found)"
else
  if ! command -v go >/dev/null 2>&1 && [ ! -x /usr/local/go/bin/go ]; then
    # Debian's golang-go is older than the pinned Toxiproxy needs (Go >= 1.23);
    # install_toxiproxy_server reports that clearly if so.
    apt_install golang-go
  fi
  version="$(.venv/bin/python -c 'from router.toxiproxy_server import TOXIPROXY_VERSION as v; print(v)')"
  say "go install github.com/Shopify/toxiproxy/v2/cmd/server@$version"
  found="$(.venv/bin/python -c \
    'from router.toxiproxy_server import install_toxiproxy_server as i; print(i())')"
  say "toxiproxy server: installed ($found)"
fi

# ---------------------------------------------------------------- compiled modules
# mypyc compiles the per-message path (pgrouter_native.COMPILED) into C extensions in
# build/native/; pgrouter uses them only while they match the sources, and runs
# interpreted otherwise. PGROUTER_NATIVE=0 skips the build.
if [ "${PGROUTER_NATIVE:-}" = "0" ]; then
  say "compiled modules: skipped (PGROUTER_NATIVE=0)"
else
  if ! .venv/bin/python -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
     || ! command -v "$(.venv/bin/python -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "cc").split()[0])')" >/dev/null 2>&1; then
    apt_install gcc python3-dev
  fi
  .venv/bin/python -m pgrouter_native build | sed 's/^/bootstrap: /'
fi

say "done"
