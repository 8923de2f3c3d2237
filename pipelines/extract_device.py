"""``cellfeat extract`` with its GPU stages in one process, the CPU work in worker processes.

Where Cellpose or the CNN embeddings run on a GPU and ``--jobs`` is above 1, each worker holding
its own copy of the networks would load them ``jobs`` times into one GPU's memory and feed it
a few sites at a time. Instead the main process holds the networks and runs them batched across
units, and the workers do the rest.

With the classical segmenter (:func:`run_pipelined`), the main process does no per-site CPU work:
each worker loads a unit's sites once, segments them, sends each site's planes and its cells'
window corners to the device stage on one bounded queue (``[extract] device_queue`` units: a full
queue makes the workers wait, so memory stays flat), measures the features while the device stage
cuts, normalizes and embeds the crops of several workers' units in one batch, then merges the
embeddings it gets back, aggregates and writes. With Cellpose on the GPU a unit goes
(:func:`run_with_device_stages`):

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
import queue
import time
import traceback
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from pipelines.extract_unit import (CLOCK, WARM_UP, Context, DeviceLink, Unit, UnitResult, _embedder, patient, run_unit,
                                    segment_unit, set_device_link, stage_units, warm_task)  # fmt: skip

log = logging.getLogger(__name__)

MODES = ("auto", "main", "workers")


def gpu_stages(ctx: Context) -> list[str]:
    """The stages of this run that would run on a CUDA device."""
    from cellfeat.device import device_type  # imports torch only where a GPU may be there

    stages = []
    if ctx.segmenter == "cellpose" and device_type(ctx.settings.segment.cellpose.device) == "cuda":
        stages.append("Cellpose")
    if ctx.embed and device_type(ctx.settings.embed.device) == "cuda":
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
        progress.unit_finished(result, len(unit.sites))

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


# crops the device stage gathers from the queue before it runs the network (in mini-batches of
# [embed] batch_size): enough to keep a GPU busy, few enough to keep the main process small
DEVICE_BATCH_CROPS = 8192


def _device_worker(ctx: Context, index: int, tasks, requests, replies, results, units: int, cell_type) -> None:
    """A worker process of :func:`run_pipelined`: whole units, the embeddings asked of the main process."""
    set_device_link(DeviceLink(index, requests, replies))
    if index >= units:  # a worker without a unit to start with: it takes its share of compiling
        stages = warm_task(ctx, cell_type)
        results.put(UnitResult(WARM_UP, seconds=sum(stages.values()), stages=stages))
    while True:
        unit = patient(tasks.get)
        if unit is None:
            return
        results.put(run_unit(unit, ctx))


def run_pipelined(units: list[Unit], ctx: Context, *, jobs: int, queue_units: int,
                  progress) -> tuple[list[UnitResult], dict[str, float]]:  # fmt: skip
    """Run ``units`` on ``jobs`` workers that do every CPU stage, the CNN here on the device, fed
    from a queue of at most ``queue_units`` units' windows. Returns the results and this process's
    seconds per stage (``embed``: the device stage, crops cut on the device included)."""
    mp = multiprocessing.get_context("spawn")
    tasks, results_q, requests = mp.Queue(), mp.Queue(), mp.Queue(maxsize=max(1, queue_units))
    replies = [mp.Queue() for _ in range(jobs)]
    workers = [mp.Process(target=_device_worker, args=(ctx, i, tasks, requests, replies[i], results_q, len(units), units[0].cell_type), daemon=True)
               for i in range(jobs)]  # fmt: skip
    for worker in workers:
        worker.start()
    for unit in units:
        tasks.put(unit)
    for _ in workers:
        tasks.put(None)
    by_name = {u.name: u for u in units}
    CLOCK.take()
    embedder = _embedder(ctx)[1] if ctx.embed else None
    size = ctx.settings.embed.crop_size
    log.info("embeddings in the main process on %s (batches of up to %d crops from a queue of %d units); every other "
             "stage on %d worker processes, each site loaded once", embedder.device if embedder else "-", DEVICE_BATCH_CROPS,
             queue_units, jobs)  # fmt: skip
    results: list[UnitResult] = []
    expected = len(units)  # and a warm-up result of each worker that started without a unit
    try:
        while len(results) < expected:
            while True:
                try:
                    result = results_q.get_nowait()
                except queue.Empty:
                    break
                results.append(result)
                if result.unit == WARM_UP:
                    expected += 1
                else:
                    progress.unit_finished(result, len(by_name[result.unit].sites))
            try:
                batch = [requests.get(timeout=0.05)]
            except queue.Empty:
                dead = [w for w in workers if w.exitcode not in (None, 0)]
                if dead and len(results) < expected:
                    _collect(results_q, results, progress, by_name, wait=1.0)
                    done = {r.unit for r in results}
                    code = dead[0].exitcode
                    results += [UnitResult(u.name, error=f"a worker process died (exit code {code}); rerun to resume")
                                for u in units if u.name not in done]  # fmt: skip
                    break
                continue
            crops = sum(len(w.corners) for w in batch[0][2])
            while crops < DEVICE_BATCH_CROPS:
                try:
                    batch.append(requests.get_nowait())
                except queue.Empty:
                    break
                crops += sum(len(w.corners) for w in batch[-1][2])
            with CLOCK("embed"):
                try:
                    vectors = embedder.embed_windows([w for _, _, windows in batch for w in windows], size)
                    answers, start = [], 0
                    for _, _, windows in batch:
                        answers.append(vectors[start : start + len(windows)])
                        start += len(windows)
                except Exception as exc:  # every unit of the batch fails with it; the run lists them
                    answers = [f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"] * len(batch)
            for (index, request, _), answer in zip(batch, answers):
                replies[index].put((request, answer))
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
    return results, CLOCK.take()


def _collect(results_q, results: list, progress, by_name: dict, *, wait: float) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            result = results_q.get(timeout=0.05)
        except queue.Empty:
            continue
        results.append(result)
        if result.unit != WARM_UP:
            progress.unit_finished(result, len(by_name[result.unit].sites))
