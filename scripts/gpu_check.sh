#!/usr/bin/env bash
# Accelerator check for a GPU machine, in one run of under 9 minutes: torch on CUDA for the tiny and small
# configurations, ONNX Runtime where its CUDA provider is installed, TensorRT where it imports; parity and
# timings per backend as one table; then bench/generation.py (lockstep vs naive) and bench/continuous.py
# (continuous batching vs one at a time vs lockstep chunks) on the GPU. A backend that cannot run prints
# 'skipped: reason'; the script goes on.
#
#     scripts/gpu_check.sh [--json $OUT/gpu_check.json]
#
# Installs nothing. For ONNX Runtime on CUDA: pip install onnxruntime-gpu; for TensorRT:
# pip install 'dreamgen[tensorrt]' --extra-index-url https://pypi.nvidia.com
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export DREAMGEN_HOME=${DREAMGEN_HOME:-$(mktemp -d -t dreamgen-home-XXXX)}  # never touch a real cache

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "nvidia-smi: not found (no NVIDIA driver here?)"
# 300 s hard stop for the backend table; the script itself starts no new row after 280 s.
timeout --signal=INT 300 "$PY" scripts/gpu_check.py --budget 280 "$@"
status=$?
[ $status -eq 124 ] && echo "gpu_check: the backend table stopped at its 5-minute limit"
# Then the lockstep batch of 8 against the naive way (reference scripts) on the GPU, tiny and small (< 2 minutes).
echo
echo "bench/generation.py on cuda: lockstep batch of 8 vs the naive way"
timeout --signal=INT 110 "$PY" bench/generation.py --device cuda --config both \
    || echo "bench/generation.py: did not finish (status $?)"
# The released-layout checkpoint on CUDA: --dtype auto is bf16 with TF32, and it paints (seconds).
echo
"$PY" -m pytest -q -m gpu tests/test_released_checkpoint.py || echo "released checkpoint on cuda: failed"
# Continuous batching on the GPU: 24 text documents of the small configuration, slot counts around the default.
echo
echo "bench/continuous.py on cuda: continuous batching vs one at a time vs lockstep chunks"
timeout --signal=INT 150 "$PY" bench/continuous.py --device cuda --configs small --documents 24 --slots 16,64,128 \
    || echo "bench/continuous.py: did not finish (status $?)"
exit $status
