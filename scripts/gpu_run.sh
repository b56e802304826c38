#!/usr/bin/env bash
# THE one command the GPU machine runs (docs/gpu.md). Installs the wheels of .whl/ (scripts/gpu_wheels.sh) into a
# folder of their own, then runs the sections of scripts/gpu/run.py one by one, each in its own process under its
# own time budget, each writing its Markdown table under $OUT as soon as it finishes; the whole stops itself after
# 9 minutes. On a machine without CUDA it imports everything the GPU path imports, says there is no CUDA, and
# exits 0.
#
#     bash scripts/gpu_run.sh                     # tables in $OUT (default out/gpu)
#     PY=.venv/bin/python bash scripts/gpu_run.sh # another Python (default python3, as that machine has it)
set -uo pipefail
cd "$(dirname "$0")/.."

HARD_STOP_S=${GPU_RUN_HARD_STOP_S:-540}
if [ -z "${GPU_RUN_STARTED:-}" ]; then  # the hard stop: this same script under timeout, whatever it does
  export GPU_RUN_STARTED=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$HARD_STOP_S" bash "$PWD/scripts/gpu_run.sh" "$@"
  status=$?
  [ $status -eq 124 ] && echo "gpu_run: stopped at the hard limit of $HARD_STOP_S s"
  exit $status
fi

PY=${PY:-python3}
OUT=${OUT:-$PWD/out/gpu}
mkdir -p "$OUT"
SITE=$(mktemp -d -t dreamgen-wheels-XXXX)
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl \
      || { echo "gpu_run: the wheels of .whl/ did not install"; exit 1; }
  echo "gpu_run: installed $(ls .whl/*.whl | wc -l) wheels from .whl/ into $SITE"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export DREAMGEN_HOME=${DREAMGEN_HOME:-$(mktemp -d -t dreamgen-home-XXXX)}  # never touch a real cache
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "gpu_run: nvidia-smi not found"
left=$((HARD_STOP_S - ($(date +%s) - GPU_RUN_STARTED) - 15))  # 15 s kept to write the summary
exec "$PY" scripts/gpu/run.py --out "$OUT" --seconds "$left"
