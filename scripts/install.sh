#!/usr/bin/env bash
# Create .venv in the repository and install cellfeat with every extra (cellpose, dask, dev).
# torch goes first, pinned: on the project's machines 2.13.0 is a CPU build on disk; asked for
# unpinned (or pulled in by cellpose) pip would fetch the newest build with GBs of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev,dask,cellpose]"
.venv/bin/python -c "import torch, cellfeat; print('cellfeat', cellfeat.__version__, 'torch', torch.__version__)"
