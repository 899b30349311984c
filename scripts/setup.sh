#!/usr/bin/env bash
# Create ./.venv and install the pinned requirements (idempotent: a second call is a no-op check).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision, cv2, sklearn, yaml, tqdm, matplotlib, scipy, pytest, submitit" 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
fi
