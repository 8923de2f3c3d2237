"""Compile the numba kernels once per machine, shared out over the processes that need them.

Every kernel is ``@njit(cache=True)``: compiled on first use, then loaded from numba's on-disk
cache. On a fresh machine (or after an upgrade) each worker process of ``extract`` used to find
the cache empty and compile the same ~60 kernels itself: every worker one core for ~50 s, and
the run waited that long whatever its core count.

Here a process about to run its first unit first runs each step below (the classical segmenter,
each feature family, the aggregation) once on a small synthetic site with the run's own settings,
so with the argument types of a real site. Each step holds a machine-wide lock
(``flock`` on a file in :func:`lock_dir`) while it runs. A process skips a step another process
holds and takes a free one, and waits only when every step it still needs is held: so on a
cold machine the processes compile different steps side by side, each step is compiled once,
and the others then load it from the cache (tenths of a second). With a warm cache the steps
only load what the process needs anyway.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.locks import FileLock, LockBusy

log = logging.getLogger(__name__)

# the order the steps are taken in, dearest first (longest compile first: the longest step bounds
# the wall time on many cores). Seconds of compiling, one process, a fresh cache, 2-core machine,
# 2026-12-04: AreaShape 11.8, Granularity 8.4, Correlation 6.2, Intensity 5.6, Texture 3.7,
# RadialDistribution 3.5, Neighbors 2.2, the classical segmenter 1.1, aggregation < 1
STEP_ORDER = ("AreaShape", "Granularity", "Correlation", "Intensity", "Texture", "RadialDistribution", "Neighbors",
              "segment", "aggregate")  # fmt: skip

# how long a process waits for a step another process holds before it does that step itself
WAIT_SECONDS = 300.0


def lock_dir() -> Path:
    """Where the steps' lock files live: beside numba's cache when ``NUMBA_CACHE_DIR`` is set,
    else in the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``)/cellfeat/warmup."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]) / "cellfeat-warmup"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cellfeat" / "warmup"


def run_steps(steps: Sequence[tuple[str, Callable[[], object]]], locks: Path | None) -> dict[str, float]:
    """Run every step once, each under its lock in ``locks`` (None: no locks); returns each step's
    seconds. A step held by another process is put off while some other step is free; when all
    that remain are held, wait for the first (up to :data:`WAIT_SECONDS`, then run it anyway)."""
    todo = list(steps)
    seconds: dict[str, float] = {}
    while todo:
        chosen, lock = 0, None
        if locks is not None:
            for i, (name, _) in enumerate(todo):
                try:
                    lock = FileLock(locks / f"{name}.lock").acquire(wait=False)
                except LockBusy:
                    continue
                except OSError as exc:  # an unwritable cache folder: compile without sharing
                    log.debug("no warm-up lock in %s (%s); compiling without sharing", locks, exc)
                    locks = None
                    break
                chosen = i
                break
            else:
                try:
                    lock = FileLock(locks / f"{todo[0][0]}.lock").acquire(wait=True, timeout=WAIT_SECONDS)
                except (LockBusy, OSError) as exc:
                    log.warning("warm-up step %s still held after %.0f s (%s); running it here", todo[0][0], WAIT_SECONDS, exc)
        name, step = todo.pop(chosen)
        start = time.perf_counter()
        try:
            step()
        finally:
            seconds[name] = time.perf_counter() - start
            if lock is not None:
                lock.release()
    return seconds


def synthetic_site(channels: int, diameter: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A small ``(channels, H, W)`` float32 site in [0, 1] with four touching cells, and its
    int32 ``Nuclei``, ``Cells``, ``Cytoplasm`` label images, as a real site's are typed."""
    r = max(4.0, diameter / 2)
    size = int(np.ceil(10 * r))
    centres = np.array([[3 * r, 3 * r], [3 * r, 6.5 * r], [6.5 * r, 3 * r], [6.5 * r, 6.5 * r]])
    yy, xx = np.mgrid[:size, :size]
    distance = np.hypot(yy[None] - centres[:, 0, None, None], xx[None] - centres[:, 1, None, None])
    nearest = distance.argmin(axis=0)
    nuclei = np.where(distance.min(axis=0) <= r, nearest + 1, 0).astype(np.int32)
    cells = np.where(distance.min(axis=0) <= 2.2 * r, nearest + 1, 0).astype(np.int32)
    cytoplasm = np.where(nuclei > 0, 0, cells).astype(np.int32)
    rng = np.random.default_rng(0)
    pixels = np.empty((channels, size, size), np.float32)
    for c in range(channels):
        texture = 1 + 0.3 * rng.standard_normal((size, size))
        signal = (0.6 * (nuclei > 0) if c == 0 else 0.4 * (cells > 0)) * texture
        pixels[c] = np.clip(0.05 + signal + 0.02 * rng.standard_normal((size, size)), 0, 1)
    return pixels, {"Nuclei": nuclei, "Cells": cells, "Cytoplasm": cytoplasm}


def warm_steps(*, channels: Sequence[str], families: Sequence[str], options: dict, segment_params: dict | None,
               operations: Sequence[str], diameter: float, segmenter: str = "classical") -> list[tuple[str, Callable[[], object]]]:  # fmt: skip
    """The steps for a run: the classical or the cellprofiler segmenter (``segmenter``;
    ``segment_params``: its keywords; None: not used), each feature family with ``options`` (as :func:`~cellfeat.features.measure.measure_objects`
    takes them), the aggregation with ``operations``; in :data:`STEP_ORDER`."""
    from cellfeat.aggregate import WELL_KEYS, aggregate_wells
    from cellfeat.features.measure import measure_objects

    pixels, masks = synthetic_site(len(channels), diameter)

    def family(name: str) -> Callable[[], object]:
        return lambda: measure_objects(masks, pixels, list(channels), families=[name], options=options)

    def segment() -> object:
        if segmenter == "cellprofiler":
            from cellfeat.segment.cellprofiler import segment_site as cellprofiler_site

            return cellprofiler_site(pixels, **segment_params)
        from cellfeat.segment.classical import segment_site

        return segment_site(pixels, **segment_params)

    def aggregate() -> object:
        cells = pd.DataFrame({"Metadata_Experiment": pd.Series(["x"] * 4, dtype=object), "Metadata_Plate": np.ones(4, np.int64),
                              "Metadata_Well": pd.Series(["B02", "B02", "B03", "B03"], dtype=object),
                              **{f"F{j}": np.arange(4, dtype=np.float32) + j for j in range(3)}})  # fmt: skip
        # several feature columns, as a real table has: their block is column-major, another layout
        # (so another compiled signature) than a single column's
        return aggregate_wells(cells, operations=operations, keys=WELL_KEYS)

    steps = {name: family(name) for name in families}
    if segment_params is not None:
        steps["segment"] = segment
    steps["aggregate"] = aggregate
    return sorted(steps.items(), key=lambda item: STEP_ORDER.index(item[0]) if item[0] in STEP_ORDER else len(STEP_ORDER))
