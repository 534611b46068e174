#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite, slow end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3
exec "${PYTHON:-python3}" -m pytest -q -n 2 --dist loadgroup --durations=10 "$@"
