#!/usr/bin/env bash
# The prepared GPU check: every step of benchmarks/gpu_check.py, all figures in ONE JSON file.
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--quick] [--only STEP ...]   # from any folder
#
# Writes ${OUT:-gpu_check_out}/gpu_check.json plus one log per step. Builds .venv with
# scripts/setup.sh first unless .venv/bin/python already imports torch. Finishes within
# GPU_CHECK_BUDGET seconds (default 470, under 8 minutes, setup included); exits non-zero if any
# step failed, timed out or was skipped for lack of time.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
BUDGET=${GPU_CHECK_BUDGET:-470}
SETUP_TIMEOUT=${GPU_CHECK_SETUP_TIMEOUT:-300}
case " $* " in *" --quick "*) BUDGET=${GPU_CHECK_BUDGET:-1800} ;; esac

start=$SECONDS
setup_args=()
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "[gpu_check] setup: bash scripts/setup.sh (limit ${SETUP_TIMEOUT} s)"
  timeout --kill-after=10 "$SETUP_TIMEOUT" bash scripts/setup.sh >"$OUT/setup.log" 2>&1
  setup_args=(--setup-rc "$?" --setup-log "$OUT/setup.log")
fi
setup_s=$((SECONDS - start))

# the driver needs only the standard library: without a usable venv it still records why
PY=.venv/bin/python
"$PY" -c "" >/dev/null 2>&1 || PY=python3
exec "$PY" benchmarks/gpu_check.py --out "$OUT" --budget $((BUDGET - setup_s)) --setup-seconds "$setup_s" \
  "${setup_args[@]}" "$@"
