#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.sh needs beyond the lent GPU machine's own Python stack (torch,
# transformers, safetensors, accelerate, numpy, pyyaml, typer, rich: no pydantic, no pytest, no
# network there), downloaded HERE into .whl/ (git-ignored, ~5 MB), to travel with the working tree:
#
#   bash benchmarks/gpu_wheels.sh                          # cp312 manylinux: the lent machine's Python
#   bash benchmarks/gpu_wheels.sh --python-version 3.11    # this machine's, for a CPU dry run
#
# Then, on the machine (see the README's "GPU check"):
#   python3 -m pip install -q --no-index --no-deps --target .whl/site .whl/*.whl
#   PYTHONPATH=$PWD/.whl/site bash benchmarks/gpu_check.sh
#
# pydantic (+ pydantic_core, annotated_types, typing_inspection, typing_extensions) is what
# evomerge.recipe imports; pytest (+ pluggy, iniconfig) runs the CUDA test subset. The versions are
# the ones the project's own environment resolves (pyproject.toml); change them together.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON_VERSION=3.12
PLATFORM=manylinux2014_x86_64
DEST=.whl
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) PYTHON_VERSION="$2"; shift 2 ;;
        --platform) PLATFORM="$2"; shift 2 ;;
        --dest) DEST="$2"; shift 2 ;;
        *) echo "gpu_wheels.sh: unknown option $1 (use --python-version X.Y, --platform TAG, --dest DIR)" >&2
           exit 2 ;;
    esac
done
WHEELS=(
    pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5
    typing_extensions==4.16.0 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1
)
ABI="cp${PYTHON_VERSION/./}"
mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one set at a time: the install command takes every wheel in the folder
python3 -m pip download -q --only-binary=:all: --no-deps --platform "$PLATFORM" \
    --python-version "$PYTHON_VERSION" --implementation cp --abi "$ABI" -d "$DEST" "${WHEELS[@]}"
ls -1 "$DEST"/*.whl
du -ch "$DEST"/*.whl | tail -1
