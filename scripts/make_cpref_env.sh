#!/usr/bin/env bash
# The reference environment for cellfeat's CellProfiler-equivalent object identification:
# CellProfiler's own identification code (cellprofiler-library-nightly) pins numpy<2 and
# scipy<1.11, so it lives in its own virtual environment, .venv-cpref (git-ignored), used by
# scripts/cp_reference.py, scripts/bench_identify.py and tests/test_segment_cellprofiler.py
# (which skip, naming this script, where it is absent). ~40 s with a warm pip cache.
#
#   bash scripts/make_cpref_env.sh [PYTHON]      # PYTHON: a Python 3.11 (default python3.11)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3.11}
"$PY" -m venv .venv-cpref
.venv-cpref/bin/pip install -q --upgrade pip
.venv-cpref/bin/pip install -q "cellprofiler-library-nightly" "numpy<2" "scipy<1.11"
.venv-cpref/bin/python -c "import importlib.metadata as m, numpy, scipy, skimage; print('cellprofiler-library', m.version('cellprofiler-library-nightly'), '| numpy', numpy.__version__, '| scipy', scipy.__version__, '| scikit-image', skimage.__version__)"
