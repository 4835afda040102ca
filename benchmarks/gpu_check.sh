#!/usr/bin/env bash
# One-shot GPU check of the live merger at 7B shape (see benchmarks/gpu_check.py for what it measures).
#
#   python3 -m pip install -q --no-index --no-deps --target .whl/site .whl/*.whl   # wheels: gpu_wheels.sh
#   PYTHONPATH=$PWD/.whl/site bash benchmarks/gpu_check.sh [gpu_check.py options]
#
# Run from anywhere; it works in the repository root and runs evomerge from the source tree
# (PYTHONPATH): nothing is installed and the network is never tried. It takes the first of
# $GPU_CHECK_PYTHON, python3, .venv/bin/python that imports what the check needs and sees a CUDA
# device (no CUDA is needed with --dry-run), and says in one line why each other one was rejected.
# GPU_CHECK_TIMEOUT (seconds, default 420) is a hard limit on the Python part; every row is printed
# and appended to $OUT/gpu_check.jsonl (else ./gpu_check.jsonl) the moment it is measured.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
LIMIT="${GPU_CHECK_TIMEOUT:-420}"

echo "== nvidia-smi"
nvidia-smi || echo "(nvidia-smi is not available)"
echo

NEEDS_CUDA=1
for arg in "$@"; do [ "$arg" = "--dry-run" ] && NEEDS_CUDA=0; done
# One line: the first module that does not import (and why), or torch seeing no CUDA device.
PROBE='
import importlib, sys
for name in ("torch", "transformers", "tokenizers", "safetensors", "accelerate", "pydantic", "yaml"):
    try:
        importlib.import_module(name)
    except Exception as error:
        first = (str(error).splitlines() or [""])[0]
        sys.exit(f"import {name} failed: {type(error).__name__}: {first}")
import torch
if sys.argv[1] == "1" and not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device")
'
PY=""
for candidate in ${GPU_CHECK_PYTHON:-} python3 .venv/bin/python; do
    if ! command -v "$candidate" >/dev/null 2>&1; then
        echo "(rejected $candidate: not found)"
        continue
    fi
    if reason=$("$candidate" -c "$PROBE" "$NEEDS_CUDA" 2>&1); then
        PY="$candidate"
        break
    fi
    echo "(rejected $candidate: $(printf '%s' "$reason" | tail -n 1))"
done
if [ -z "$PY" ]; then
    echo "gpu_check.sh: no usable Python (reasons above); install the wheels of benchmarks/gpu_wheels.sh with" \
        "'python3 -m pip install --no-index --no-deps --target .whl/site .whl/*.whl' and set PYTHONPATH=\$PWD/.whl/site"
    exit 3
fi
echo "== python: $PY ($("$PY" -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'))"
"$PY" -c "import triton; print('triton', triton.__version__)" 2>/dev/null || echo "(no triton: on a GPU the merge kernels would run eagerly)"
echo

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
timeout --signal=TERM --kill-after=15 "$LIMIT" "$PY" benchmarks/gpu_check.py "$@"
status=$?
if [ "$status" -eq 124 ]; then
    echo "gpu_check.py ran past ${LIMIT} s and was stopped (every row measured before is in gpu_check.jsonl)"
fi
exit "$status"
