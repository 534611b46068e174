#!/usr/bin/env bash
# Installs what dmcp-tf needs on a fresh machine: Python packages and, where apt
# is available, Debian's Fashion-MNIST files (the embedded default data set).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

"$PYTHON" -m pip install --quiet --disable-pip-version-check -r requirements.txt
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . >/dev/null

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" != 0 ] && command -v sudo >/dev/null && SUDO=sudo
  ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
    || echo "note: could not install dataset-fashion-mnist; pass --data_dir or let TFDS download." >&2
fi
