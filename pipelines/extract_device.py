"""``cellfeat extract`` with its GPU stages in one process, the CPU work in worker processes.

Where Cellpose or the CNN embeddings run on a GPU and ``--jobs`` is above 1, each worker holding
its own copy of the networks would load them ``jobs`` times into one GPU's memory and feed it
a few sites at a time. Instead the main process holds the networks and runs them batched across
units (:func:`run_pipelined`), and does no other per-site work.

Each worker takes whole units: it loads a unit's sites once and does every CPU stage. What needs
the device it sends on one bounded queue (``[extract] device_queue`` requests: a full queue makes
the workers wait, so memory stays flat):

1. with Cellpose on the device, the unit's sites (their planes as grey levels,
   :func:`cellfeat.crops.compact_planes`), for their nuclei and cells, which come back as label
   images (the classical segmenter runs in the worker);
2. with the embeddings on, each site's planes and its cells' window corners; the worker measures
   the features while the device stage cuts, normalizes and embeds the crops, then merges the
   embeddings it gets back, aggregates and writes.

The device stage answers segmentation requests first (their workers wait on them), in batches of
up to ``[segment.cellpose] batch_sites`` sites across workers, then embeds the crops of several
workers' units in one batch. The tables are the same as when every worker runs every stage
(tests/test_extract.py). Workers are started with ``spawn``: a forked copy of a process that has
initialised CUDA cannot use it.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import time
import traceback

from pipelines.extract_unit import (CLOCK, EMBED, SEGMENT, WARM_UP, Context, DeviceLink, Unit, UnitResult, _embedder,
                                    _segmenter, _segment_sites, patient, run_unit, set_device_link, warm_task)  # fmt: skip

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


# crops the device stage gathers from the queue before it runs the network (in mini-batches of
# [embed] batch_size): enough to keep a GPU busy, few enough to keep the main process small
DEVICE_BATCH_CROPS = 8192


def _device_worker(ctx: Context, index: int, tasks, requests, replies, results, units: int, cell_type, cellpose: bool) -> None:
    """A worker process of :func:`run_pipelined`: whole units, the device's work asked of the main process."""
    set_device_link(DeviceLink(index, requests, replies, cellpose=cellpose))
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
    """Run ``units`` on ``jobs`` workers that do every CPU stage; Cellpose (when it is the segmenter)
    and the CNN here on the device, fed from a queue of at most ``queue_units`` requests. Returns
    the results and this process's seconds per stage (``segment``: Cellpose; ``embed``: the crops
    cut on the device and embedded)."""
    cellpose = ctx.segmenter == "cellpose"
    mp = multiprocessing.get_context("spawn")
    tasks, results_q, requests = mp.Queue(), mp.Queue(), mp.Queue(maxsize=max(1, queue_units))
    replies = [mp.Queue() for _ in range(jobs)]
    workers = [mp.Process(target=_device_worker, daemon=True,
                          args=(ctx, i, tasks, requests, replies[i], results_q, len(units), units[0].cell_type, cellpose))
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
    if cellpose:
        _segmenter(ctx)  # the networks loaded before the first request
    batch_sites = ctx.settings.segment.cellpose.batch_sites
    size = ctx.settings.embed.crop_size
    log.info("%s in the main process on %s (embeddings in batches of up to %d crops, Cellpose of up to %d sites, from "
             "a queue of %d requests); every other stage on %d worker processes, each site loaded once",
             " and ".join((["Cellpose"] if cellpose else []) + (["embeddings"] if embedder else [])) or "nothing",
             ", ".join(gpu_stages(ctx)) and "the GPU" or "the CPU", DEVICE_BATCH_CROPS, batch_sites, queue_units, jobs)  # fmt: skip
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
            while _size(batch, EMBED) < DEVICE_BATCH_CROPS and _size(batch, SEGMENT) < batch_sites:
                try:
                    batch.append(requests.get_nowait())
                except queue.Empty:
                    break
            segments = [r for r in batch if r[2] == SEGMENT]
            for group in _groups(segments):
                _answer(replies, group, "segment", lambda group: _segment(ctx, group))
            embeds = [r for r in batch if r[2] == EMBED]
            if embeds:
                _answer(replies, embeds, "embed", lambda group: _embed(embedder, group, size))
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
    return results, CLOCK.take()


def _size(batch: list, kind: str) -> int:
    """Crops (``EMBED``) or sites (``SEGMENT``) in ``batch``'s requests of that kind."""
    if kind == EMBED:
        return sum(len(w.corners) for _, _, k, windows in batch if k == EMBED for w in windows)
    return sum(len(request.planes) for _, _, k, request in batch if k == SEGMENT)


def _groups(segments: list) -> list[list]:
    """Segmentation requests that can share Cellpose's batches: one cell type (its diameters), one site shape."""
    groups: dict = {}
    for item in segments:
        request = item[3]
        groups.setdefault((request.cell_type, request.planes[0].shape if request.planes else None), []).append(item)
    return list(groups.values())


def _answer(replies, group: list, stage: str, work) -> None:
    """Run ``work`` on a group of requests, this process's time clocked as ``stage``, and send each
    worker its part of the answer; an error goes to every request of the group (their units fail
    with it, and the run lists them)."""
    with CLOCK(stage):
        try:
            answers = work(group)
        except Exception as exc:
            answers = [f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"] * len(group)
    for (index, request, _, _), answer in zip(group, answers):
        replies[index].put((request, answer))


def _segment(ctx: Context, group: list) -> list[list]:
    """Cellpose over the sites of ``group``'s requests (one cell type), in batches of
    ``[segment.cellpose] batch_sites``; each request's segmentations."""
    sites = [site for _, _, _, request in group for site in request.sites()]
    segs = _segment_sites(ctx, sites, group[0][3].cell_type)
    answers, start = [], 0
    for _, _, _, request in group:
        answers.append(segs[start : start + len(request.planes)])
        start += len(request.planes)
    return answers


def _embed(embedder, group: list, size: int) -> list[list]:
    vectors = embedder.embed_windows([w for _, _, _, windows in group for w in windows], size)
    answers, start = [], 0
    for _, _, _, windows in group:
        answers.append(vectors[start : start + len(windows)])
        start += len(windows)
    return answers


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
