#!/usr/bin/env bash
# Put into .whl/ every wheel the GPU machine lacks for scripts/gpu_run.sh (that machine has no network; its packages
# are in /work/shared/reference/gpu.md and scripts/gpu/machine.txt). Run on a machine that reaches PyPI:
#
#     bash scripts/gpu_wheels.sh            # then the device call carries .whl (git ignores it)
#
# Pure Python wheels only (py3-none-any): they install on that machine's Python 3.12 and on the CPU simulation
# alike. Fails if the repository as it travels (tracked files plus untracked ones git does not ignore) and the
# wheels together pass 60 MB: the device call carries at most 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."

# diffusers 0.39.0 accepts the huggingface_hub 1.x that transformers 5.17 wants, and needs requests to import;
# requests needs urllib3, charset_normalizer, idna and certifi (the last two come with httpx there too: shipped
# anyway, they are small, so nothing rests on what httpx happens to pull).
WHEELS=(
  diffusers==0.39.0
  requests==2.34.2
  urllib3==2.8.0
  charset_normalizer==3.5.3
  idna==3.21
  certifi==2026.10.19.post1
)
LIMIT=$((60 * 1000 * 1000))
PY=${PY:-python3}

mkdir -p .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation py --abi none \
    --platform any --dest .whl "${WHEELS[@]}"
# Only the pinned wheels go along: a wheel left there from an older pin would be installed too.
keep=$(printf '%s\n' "${WHEELS[@]}" | sed -E 's/==/-/; s/[-_.]+/_/g' | tr '[:upper:]' '[:lower:]')
for wheel in .whl/*.whl; do
  stem=$(basename "$wheel" | sed -E 's/-py3-none-any\.whl$//; s/[-_.]+/_/g' | tr '[:upper:]' '[:lower:]')
  grep -qx "$stem" <<<"$keep" || { echo "removing .whl/$(basename "$wheel") (not pinned here)"; rm -f "$wheel"; }
done

count=$(find .whl -type f -name '*.whl' | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
  echo "gpu_wheels: expected ${#WHEELS[@]} wheels in .whl/, found $count" >&2
  exit 1
fi
wheels=$(find .whl -type f -name '*.whl' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
tree=$(git ls-files --cached --others --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
total=$((wheels + tree))
awk -v n="$count" -v w="$wheels" -v t="$tree" -v l="$LIMIT" 'BEGIN {
  printf "gpu_wheels: %d wheels, %.1f MB; repository %.1f MB; together %.1f MB (limit %.0f MB)\n", n, w / 1e6, t / 1e6,
         (w + t) / 1e6, l / 1e6 }'
if [ "$total" -gt "$LIMIT" ]; then
  echo "gpu_wheels: the repository and .whl/ pass 60 MB: the device call cannot carry them" >&2
  exit 1
fi
