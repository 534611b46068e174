#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the DMCP pipeline; with no arguments, the
# default Fashion-MNIST run. Arguments go to main.py (e.g. --config=configs/x.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" main.py "$@"
