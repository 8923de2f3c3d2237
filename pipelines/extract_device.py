"""``cellfeat extract`` with its GPU stages in one process, the CPU work in worker processes.

Where Cellpose or the CNN embeddings run on a GPU and ``--jobs`` is above 1, each worker holding
its own copy of the networks would load them ``jobs`` times into one GPU's memory and feed it
a few sites at a time. Instead the main process holds the networks and runs them batched across
units, and the workers do the rest. A unit goes:

1. classical segmentation (CPU) in a worker (:func:`~pipelines.extract_unit.segment_unit`);
   with Cellpose this step is left to 2;
2. here, on the GPU: the unit's sites loaded, segmented with Cellpose, their cells embedded,
   sites of several units of one plate in one batch (:func:`~pipelines.extract_unit.stage_units`);
3. features, aggregation and the unit's files in a worker
   (:func:`~pipelines.extract_unit.run_unit` given the staged result).

The tables are the same as when every worker runs every stage (tests/test_extract.py).
At most ``2 * jobs`` tasks are in flight, so the main process never holds more than a few units.
Workers are started with ``spawn``: a forked copy of a process that has initialised CUDA
cannot use it.
"""

from __future__ import annotations

import logging
import multiprocessing
import traceback
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from cellfeat.device import resolve_device
from pipelines.extract_unit import CLOCK, Context, Unit, UnitResult, run_unit, segment_unit, stage_units

log = logging.getLogger(__name__)

MODES = ("auto", "main", "workers")


def gpu_stages(ctx: Context) -> list[str]:
    """The stages of this run that would run on a CUDA device."""
    stages = []
    if ctx.segmenter == "cellpose" and resolve_device(ctx.settings.segment.cellpose.device).type == "cuda":
        stages.append("Cellpose")
    if ctx.embed and resolve_device(ctx.settings.embed.device).type == "cuda":
        stages.append("embeddings")
    return stages


def use_main_process(mode: str, ctx: Context, *, jobs: int, dask: str | None) -> bool:
    """``[extract] device_stages``: ``auto`` runs the GPU stages in the main process when some
    stage is on a GPU and ``--jobs`` is above 1; ``main`` always does (with ``--jobs`` above 1);
    ``workers`` never does. A Dask cluster's workers always run every stage themselves."""
    if mode not in MODES:
        raise ValueError(f"[extract] device_stages must be one of {MODES}, got {mode!r}")
    if dask or jobs <= 1 or mode == "workers":
        return False
    return mode == "main" or bool(gpu_stages(ctx))


def _error(unit: Unit, exc: BaseException) -> UnitResult:
    text = str(exc) if isinstance(exc, RuntimeError) else f"{exc}\n{traceback.format_exc(limit=3)}"
    return UnitResult(unit.name, error=text)


def run_with_device_stages(units: list[Unit], ctx: Context, *, jobs: int, batch_sites: int,
                           progress) -> tuple[list[UnitResult], dict[str, float]]:  # fmt: skip
    """Run ``units``: GPU stages here, batched over about ``batch_sites`` sites; the rest on ``jobs``
    workers. Returns the units' results (their ``stages``: the seconds their workers spent, the
    segmentation task's included) and the seconds this process spent per stage."""
    host_segments = ctx.segmenter != "cellpose"
    CLOCK.take()
    segment_seconds: dict[str, dict[str, float]] = {}  # unit name -> its worker segmentation task's stages
    todo = deque(units)
    segmenting: dict[Future, Unit] = {}
    measuring: dict[Future, Unit] = {}
    ready: list[tuple[Unit, list | None]] = []  # waiting for the device stage, with their segmentations
    results: list[UnitResult] = []

    def ready_sites() -> int:
        return sum(len(u.sites) for u, _ in ready)

    def finish(unit: Unit, result: UnitResult) -> None:
        results.append(result)
        progress.update(len(unit.sites))

    here = (["Cellpose"] if not host_segments else []) + (["embeddings"] if ctx.embed else [])
    log.info("%s in the main process (on a GPU: %s), batched over ~%d sites; %s on %d worker processes",
             " and ".join(here) or "loading", ", ".join(gpu_stages(ctx)) or "none", batch_sites,
             "segmentation and features" if host_segments else "features", jobs)  # fmt: skip
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while todo or segmenting or measuring or ready:
            while todo and len(segmenting) + len(measuring) < 2 * jobs:
                if host_segments:
                    unit = todo.popleft()
                    segmenting[pool.submit(segment_unit, unit, ctx)] = unit
                elif ready_sites() < batch_sites:
                    ready.append((todo.popleft(), None))
                else:
                    break
            starving = len(measuring) < jobs or (not todo and not segmenting)
            if ready and (ready_sites() >= batch_sites or starving):
                plate = (ready[0][0].experiment, ready[0][0].plate)
                group = [(u, segs) for u, segs in ready if (u.experiment, u.plate) == plate]
                ready = [(u, segs) for u, segs in ready if (u.experiment, u.plate) != plate]
                try:
                    staged = stage_units([u for u, _ in group], ctx, [s for _, s in group] if host_segments else None)
                except Exception as exc:  # every unit of the batch fails; the run lists them
                    for unit, _ in group:
                        finish(unit, _error(unit, exc))
                    continue
                for (unit, _), one in zip(group, staged):
                    measuring[pool.submit(run_unit, unit, ctx, one.for_worker())] = unit
                continue
            if not (segmenting or measuring):
                continue
            done, _ = wait([*segmenting, *measuring], return_when=FIRST_COMPLETED)
            for future in done:
                if future in segmenting:
                    unit = segmenting.pop(future)
                    try:
                        segs, segment_seconds[unit.name] = future.result()
                        ready.append((unit, segs))
                    except Exception as exc:
                        finish(unit, _error(unit, exc))
                else:
                    unit = measuring.pop(future)
                    result = future.result()
                    for stage, seconds in segment_seconds.pop(unit.name, {}).items():
                        result.stages[stage] = result.stages.get(stage, 0.0) + seconds
                        result.seconds += seconds
                    finish(unit, result)
    return results, CLOCK.take()
