#!/usr/bin/env bash
# A CPU simulation of the GPU machine (scripts/gpu/machine.txt): a virtualenv holding only that machine's packages,
# at its versions, plus what .whl/ holds. In it:
#   1. none of what that machine lacks imports (diffusers, requests, celery, redis, boto3, ...), but from .whl/;
#   2. `bash scripts/gpu_run.sh` runs to "no CUDA", exit 0, with no ImportError and no traceback;
#   3. transformers' LlamaModel takes a cache by llama_cache.py's keyword on the lowest transformers pyproject.toml
#      allows (tests/test_llama_cache.py).
# The virtualenv is kept in $GPU_SIM_DIR (default .cache/gpu-sim, which git ignores; CI keeps it outside its fresh
# clone), rebuilt when machine.txt changes.
#
#     bash scripts/gpu_simulate.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${GPU_SIM_PYTHON:-python3}  # 3.11: the Python of the only torch CPU build on this disk (machine.txt says why)
VENV=${GPU_SIM_DIR:-.cache/gpu-sim}/venv
STAMP=$VENV/.machine-$(sha256sum scripts/gpu/machine.txt | cut -c1-16)

if [ ! -f "$STAMP" ]; then
  echo "gpu_simulate: building $VENV from scripts/gpu/machine.txt"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$BASE" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r scripts/gpu/machine.txt
  # what the machine lacks must not come in as someone's dependency
  "$VENV/bin/pip" uninstall -q -y diffusers requests urllib3 celery kombu redis boto3 moto tensorrt \
      onnxruntime-gpu 2>/dev/null || true
  touch "$STAMP"
fi
PY=$VENV/bin/python

# 1. the machine's package set
"$PY" - <<'EOF'
import importlib.util, sys
import transformers, torch
absent = [m for m in ("diffusers", "requests", "urllib3", "celery", "kombu", "redis", "boto3", "moto", "tensorrt")
          if importlib.util.find_spec(m)]
if absent:
    sys.exit(f"gpu_simulate: the simulation holds {', '.join(absent)}, which the GPU machine lacks")
print(f"gpu_simulate: Python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}"
      "; no diffusers, requests, celery, redis, boto3, tensorrt")
EOF

# 2. the one command, as that machine runs it: wheels from .whl/, no CUDA here
bash scripts/gpu_wheels.sh  # the pinned wheels, and the 60 MB the device call can carry
out=$(mktemp -d -t gpu-sim-out-XXXX)
log=$out/gpu_run.log
set +e
PY="$PY" OUT="$out" bash scripts/gpu_run.sh >"$log" 2>&1
status=$?
set -e
cat "$log"
if [ $status -ne 0 ] || ! grep -q "no CUDA" "$log" || grep -Eq "Traceback|ImportError|ModuleNotFoundError" "$log"; then
  echo "gpu_simulate: gpu_run.sh did not stop cleanly at 'no CUDA' (status $status)" >&2
  exit 1
fi

# 3. LlamaModel on a cache by llama_cache.py's keyword on this transformers, with diffusers from .whl/ as gpu_run.sh
#    installs it
site=$(mktemp -d -t gpu-sim-site-XXXX)
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
PYTHONPATH="$site:$PWD" "$PY" -m pytest -q -p no:cacheprovider tests/test_llama_cache.py
rm -rf "$site" "$out"
