#!/usr/bin/env bash
# On a machine with a GPU: times plain and DMCP steps of the paper's 1.5x MobileNetV2 at
# 224x224, batch 64, in float32 and mixed_float16 (sliced and masked sub-networks, with the
# DMCP step's profile), and the input pipeline's images/s. Without a GPU it says so and
# exits 0. Results: gpu_step_time.<policy>.json (set OUT=prefix to move them).
#   bash benchmarks/gpu.sh                                    # synthetic batches only
#   DATASET=imagenet2012 DATA_DIR=/data/tfds bash benchmarks/gpu.sh   # and the input pipeline
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-gpu_step_time}
export TF_CPP_MIN_LOG_LEVEL=3

if ! "$PYTHON" -c "import sys, tensorflow as tf; sys.exit(0 if tf.config.list_physical_devices('GPU') else 1)"; then
  echo "benchmarks/gpu.sh: TensorFlow sees no GPU on this machine; nothing to time. Run it where one is."
  exit 0
fi
PIPELINE=()
if [ -n "${DATASET:-}" ]; then
  PIPELINE=(--input_pipeline="$DATASET" ${DATA_DIR:+--data_dir="$DATA_DIR"})
fi
for policy in float32 mixed_float16; do
  "$PYTHON" benchmarks/step_time.py --models=mobilenet_v2 --mobilenet_batch=64 --steps=20 --warmup=3 \
      --profile=always --mixed_precision="$policy" --json_out="$OUT.$policy.json" ${PIPELINE[@]+"${PIPELINE[@]}"}
done
