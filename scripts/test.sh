#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite, slow end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3
# oneDNN CPU kernels on unless set (TensorFlow enables them only on AVX-512 CPUs): the suite
# runs about 1.5x faster on AVX2; the two-worker tests pin their processes to the default.
export TF_ENABLE_ONEDNN_OPTS="${TF_ENABLE_ONEDNN_OPTS:-1}"
exec "${PYTHON:-python3}" -m pytest -q -n 2 --dist loadgroup --durations=10 "$@"
