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

# pytest exits 5 when it collected nothing: that is a failure too.
run_pytest() {
  local label="$1"
  shift
  local rc=0
  "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "test.sh: $label collected no tests; that counts as a failure" >&2
    failed+=("$label (no tests collected)")
  elif [ "$rc" -ne 0 ]; then
    failed+=("$label (exit $rc)")
  fi
}

echo "== pytest ($(.venv/bin/python -c 'import router, pgrouter_native as n; print(n.status())'))"
run_pytest pytest .venv/bin/pytest -q "$@"

if [ "$#" -eq 0 ]; then
  # The same code must also work interpreted (no C compiler, or edited sources): the
  # unit tests again without the compiled modules.
  echo "== pytest tests/unit, interpreted (PGROUTER_NATIVE=0)"
  run_pytest "pytest interpreted" env PGROUTER_NATIVE=0 .venv/bin/pytest -q -p no:cacheprovider tests/unit
fi

if [ "${#failed[@]}" -ne 0 ]; then
  printf 'test.sh: FAILED: %s\n' "$(IFS=,; echo "${failed[*]}")" >&2
  exit 1
fi
echo "test.sh: all checks passed"
