"""Kernels cached by different processes still compute the right numbers when loaded together.

numba names a kernel's compiled code with a process-local id; functions it generates per variant
under one name (its ``ndarray.sort`` and ``np.argsort``) can then get the same symbol in caches
written by two processes, and a third process that loads both links one module's sort to the
other's argsort: silently wrong numbers (numba issues #5128, #10486). ``cellfeat extract``'s
workers fill the cache this way on a fresh machine. The scenario, with a private cache folder:
one process compiles Correlation, a second loads it and compiles Intensity, a third loads both.
Before the kernels used our own sort (``primitives.sort_pairs``), Intensity's quartiles of
continuous images came out of an unsorted array in the third process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CORRELATION = """
import numpy as np
from cellfeat.features.correlation import correlation
rng = np.random.default_rng(1)
labels = np.zeros((30, 30), np.int32)
labels[2:14, 2:14], labels[16:28, 5:25] = 1, 2
correlation(labels, (rng.integers(0, 256, (2, 30, 30)) / 255).astype(np.float32))
"""

INTENSITY = """
import json
import numpy as np
from cellfeat.features.intensity import intensity
rng = np.random.default_rng(6)
labels = np.zeros((40, 40), np.int32)
labels[3:18, 3:20], labels[22:38, 10:36] = 1, 2
pixels = rng.random((40, 40)).astype(np.float32)  # continuous values: the sorting path
out = intensity(labels, pixels)
print(json.dumps({k: out[k].tolist() for k in ("Intensity_LowerQuartileIntensity_{image}", "Intensity_MADIntensity_{image}")}))
"""


def run(code: str, cache: Path) -> str:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def expected() -> dict[str, list[float]]:
    rng = np.random.default_rng(6)
    labels = np.zeros((40, 40), np.int32)
    labels[3:18, 3:20], labels[22:38, 10:36] = 1, 2
    pixels = rng.random((40, 40)).astype(np.float32).astype(np.float64)
    low, mad = [], []
    for k in (1, 2):
        v = pixels[labels == k]
        low.append(float(np.percentile(v, 25)))
        mad.append(float(np.median(np.abs(v - np.median(v)))))
    return {"Intensity_LowerQuartileIntensity_{image}": low, "Intensity_MADIntensity_{image}": mad}


def test_kernels_cached_by_different_processes_load_together(tmp_path):
    cache = tmp_path / "numba-cache"
    run(CORRELATION + INTENSITY, cache)  # everything cached (the shared primitives too) ...
    for stale in [*cache.rglob("correlation.*"), *cache.rglob("intensity.*")]:
        stale.unlink()  # ... but these two modules' kernels, as after an edit or an upgrade
    run(CORRELATION, cache)  # process 1 compiles Correlation's kernels into the cache
    second = json.loads(run(CORRELATION + INTENSITY, cache).splitlines()[-1])  # loads them, compiles Intensity's
    third = json.loads(run(CORRELATION + INTENSITY, cache).splitlines()[-1])  # loads both
    want = expected()
    for got in (second, third):
        for key, values in want.items():
            np.testing.assert_allclose(got[key], values, rtol=1e-12, err_msg=key)


def test_no_cached_kernel_uses_numbas_generated_sorts():
    """numba builds ``sort``/``argsort``/``median``/``percentile``/``partition`` from per-variant
    generated functions (the collision above); cellfeat's cached kernels use
    ``primitives.sort_pairs`` instead."""
    import importlib
    import inspect
    import pkgutil
    import re

    from numba.core.registry import CPUDispatcher

    import cellfeat.aggregate
    import cellfeat.features
    import cellfeat.segment

    banned = re.compile(r"np\.(sort|argsort|median|percentile|quantile|partition|argpartition|unique|nanmedian|nanpercentile)\(|\.sort\(|\.argsort\(|\bsorted\(")
    found, kernels = [], 0
    modules = [cellfeat.aggregate]
    for package in (cellfeat.features, cellfeat.segment):
        modules += [importlib.import_module(f"{package.__name__}.{info.name}") for info in pkgutil.iter_modules(package.__path__)]
    for module in modules:
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher) and obj.__module__ == module.__name__:
                kernels += 1
                code = "\n".join(line.split("#")[0] for line in inspect.getsource(obj.py_func).splitlines() if '"""' not in line)
                if banned.search(code):
                    found.append(f"{module.__name__}.{name}")
    assert kernels > 50
    assert not found, f"kernels calling numba's generated sorts: {found}"


def test_our_sort_matches_numpy():
    from cellfeat.features.primitives import argsort, median_inplace, select_inplace, sort_inplace

    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 3, 15, 16, 17, 100, 5000):
        for kind in ("random", "ties", "sorted", "reversed", "nan"):
            a = rng.random(n)
            if kind == "ties":
                a = rng.integers(0, 5, n).astype(float)
            elif kind == "sorted":
                a = np.sort(a)
            elif kind == "reversed":
                a = np.sort(a)[::-1].copy()
            elif kind == "nan" and n:
                a[rng.integers(0, n, max(1, n // 10))] = np.nan
            b = a.copy()
            sort_inplace(b)
            np.testing.assert_array_equal(b, np.sort(a), err_msg=f"{n} {kind}")
            idx = argsort(a)
            np.testing.assert_array_equal(np.sort(idx), np.arange(n))
            np.testing.assert_array_equal(a[idx], np.sort(a), err_msg=f"{n} {kind}")
            for k in {0, n // 3, n // 2, n - 1} if n else ():
                b = a.copy()
                assert np.array_equal(select_inplace(b, k), np.sort(a)[k], equal_nan=True), (n, kind, k)
                assert np.array_equal(np.sort(b), np.sort(a), equal_nan=True)  # a permutation
                assert (np.sort(b[:k]) == np.sort(a)[:k]).all() or kind == "nan"  # the k smallest before it
            if n and kind != "nan":
                assert median_inplace(a.copy()) == np.median(a), (n, kind)
