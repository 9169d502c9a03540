#!/usr/bin/env bash
# THE test command: bootstrap the machine, then ruff, mypy and pytest.
# Extra arguments go to pytest, e.g. ./scripts/test.sh tests/unit -k scram
# Every step runs; the exit status is non-zero if any of them failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/bootstrap.sh

failed=()

echo "== ruff check"
.venv/bin/ruff check . || failed+=(ruff)

echo "== mypy"
.venv/bin/mypy || failed+=(mypy)

echo "== pytest"
rc=0
.venv/bin/pytest -q "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that counts as a failure" >&2
  failed+=("pytest (no tests collected)")
elif [ "$rc" -ne 0 ]; then
  failed+=("pytest (exit $rc)")
fi

if [ "${#failed[@]}" -ne 0 ]; then
  printf 'test.sh: FAILED: %s\n' "$(IFS=,; echo "${failed[*]}")" >&2
  exit 1
fi
echo "test.sh: all checks passed"
