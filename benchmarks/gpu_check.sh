#!/usr/bin/env bash
# One-shot GPU check of the live merger at 7B shape (see benchmarks/gpu_check.py for what it measures).
#
#   bash benchmarks/gpu_check.sh [gpu_check.py options]     e.g. --layers 32 --placements device,host
#
# Run from anywhere; it works in the repository root. Needs no internet: it uses a Python that already
# has torch (with CUDA), transformers, safetensors, accelerate, pydantic and pyyaml (the system python3,
# or .venv/bin/python), and runs evomerge from the source tree (PYTHONPATH), so nothing is installed.
# Only when no such Python exists does it try a venv with pip (which needs a reachable package index).
# GPU_CHECK_PYTHON forces the interpreter. GPU_CHECK_TIMEOUT (seconds, default 540) is a hard limit on the Python part; results are printed as
# they come, and written to $OUT/gpu_check.json when $OUT is set.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
LIMIT="${GPU_CHECK_TIMEOUT:-540}"

echo "== nvidia-smi"
nvidia-smi || echo "(nvidia-smi is not available)"
echo

NEEDED="import torch, transformers, safetensors, accelerate, pydantic, yaml"
CUDA_OK="import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'"
PY="${GPU_CHECK_PYTHON:-}"  # set it to force an interpreter (no checks), e.g. for a --dry-run on a CPU
for candidate in python3 .venv/bin/python; do
    [ -n "$PY" ] && break
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "$NEEDED" 2>/dev/null; then
        if "$candidate" -c "$CUDA_OK" 2>/dev/null; then
            PY="$candidate"
            break
        fi
        echo "($candidate has torch but no CUDA: $("$candidate" -c 'import torch; print(torch.__version__)'))"
    fi
done
if [ -z "$PY" ]; then
    echo "== no Python with CUDA torch + transformers found; trying a venv (needs a package index)"
    python3 -m venv --system-site-packages .venv-gpu-check || exit 3
    PY=.venv-gpu-check/bin/python
    if ! "$PY" -c "import torch" 2>/dev/null; then
        "$PY" -m pip install -q torch==2.13.0 || { echo "cannot install torch"; exit 3; }
    fi
    "$PY" -c "$NEEDED" 2>/dev/null || "$PY" -m pip install -q -e . || { echo "cannot install evomerge"; exit 3; }
fi
echo "== python: $PY ($("$PY" -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'))"
"$PY" -c "import triton; print('triton', triton.__version__)" 2>/dev/null || echo "(no triton: on a GPU the merge kernels would run eagerly)"
echo

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
timeout --signal=TERM --kill-after=15 "$LIMIT" "$PY" benchmarks/gpu_check.py "$@"
status=$?
if [ "$status" -eq 124 ]; then
    echo "gpu_check.py ran past ${LIMIT} s and was stopped (the rows printed above are complete)"
fi
exit "$status"
