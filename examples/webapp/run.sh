#!/usr/bin/env bash
# Start the example web app: a local PostgreSQL primary + replica, pgrouter in front, and
# two processes of examples/webapp/app.py on ports 8001 and 8002. Options: see --help.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
[ -x .venv/bin/python ] || ./scripts/bootstrap.sh
exec .venv/bin/python -m examples.webapp "$@"
