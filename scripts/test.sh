#!/usr/bin/env bash
# Set up the environment (if needed) and run the whole test suite. Exit 0 only if tests ran and passed
# (pytest exits 5 when no test was collected).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
