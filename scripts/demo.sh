#!/usr/bin/env bash
# Set up the environment and run a short CPU demo: MOCCA (soft boundary) on CIFAR-10 class 1.
# Uses ../shared/data/cifar10 when present, otherwise the path in $CIFAR10_ROOT.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA=${CIFAR10_ROOT:-../shared/data/cifar10}
if [ ! -e "$DATA" ]; then
  echo "No CIFAR-10 data at $DATA. Set CIFAR10_ROOT to a folder holding cifar-10-batches-py/ (or an image-folder"
  echo "root train/<class>/, test/<class>/), or download the official set once with:"
  echo "  .venv/bin/python main_cifar10.py -ptr -tr -tt -nc 1 -dp ./cifar10 --download --preset cpu"
  exit 2
fi
exec .venv/bin/python main_cifar10.py -ptr -tr -tt -nc 1 -bd soft -dp "$DATA" --preset cpu "$@"
