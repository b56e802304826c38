#!/usr/bin/env bash
# Accelerator check for a GPU machine, in one run of under 8 minutes: torch on CUDA for the tiny and small
# configurations, ONNX Runtime where its CUDA provider is installed, TensorRT where it imports; parity and
# timings per backend as one table. A backend that cannot run prints 'skipped: reason'; the script goes on.
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
# 480 s hard stop; the script itself starts no new row after 450 s.
timeout --signal=INT 480 "$PY" scripts/gpu_check.py --budget 450 "$@"
status=$?
[ $status -eq 124 ] && echo "gpu_check: stopped at the 8-minute limit"
exit $status
