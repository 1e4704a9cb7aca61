#!/usr/bin/env bash
# One short run on a CUDA machine: the CUDA tests, then the GPU rows of the performance suite
# (benchmarks/gpu_check.py), written as one Markdown table. Under five minutes in total; each
# part has its own time limit, and a part that fails or runs out of time does not stop the next.
#
#   bash benchmarks/gpu_check.sh [OUTPUT.md]     # default: gpu_check.md in the current folder
#   bash benchmarks/gpu_check.sh --dry-run       # no CUDA needed: the Python rows, tiny, on the CPU
#
# Without CUDA (and without --dry-run) it says so and exits 0: there is nothing to check.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

DRY_RUN=0
OUTPUT="gpu_check.md"
for argument in "$@"; do
  case "$argument" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) OUTPUT="$argument" ;;
  esac
done

if [ "$DRY_RUN" = 1 ]; then
  exec timeout 240 "$PYTHON" "$ROOT/benchmarks/gpu_check.py" --dry-run --output "$OUTPUT"
fi

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device here; skipped (run it on a CUDA machine, or pass --dry-run)."
  exit 0
fi

status=0
echo "== CUDA tests (every test whose name or parameters mention cuda) =="
timeout 150 "$PYTHON" -m pytest "$ROOT/tests/unit" -q -k cuda -p no:cacheprovider \
  -o addopts="-ra --strict-markers" || status=1

echo "== GPU rows of the performance suite =="
timeout 150 "$PYTHON" "$ROOT/benchmarks/gpu_check.py" --output "$OUTPUT" || status=1

echo "gpu_check: table in $OUTPUT; exit status $status"
exit "$status"
