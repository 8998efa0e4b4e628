#!/usr/bin/env bash
# One short GPU check (under 5 minutes on one GPU): resnet32x4 -> resnet8x4 KD on CIFAR-shaped
# synthetic data, fp32 vs bf16 + channels_last, online vs cached teacher; JSON per variant.
# Python packages distill needs that the GPU image lacks can travel as wheels in .whl/.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import pydantic" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 benchmarks/gpu_check.py "$@"
