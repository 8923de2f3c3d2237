"""One unit of ``cellfeat extract``: a few whole wells of one plate, images to tables.

A worker process (joblib or Dask) runs :func:`run_unit`: load every site of the unit once,
segment them (Cellpose in batches, or the classical segmenter site by site), embed all cells of
the unit in shared mini-batches (:func:`stage_unit`), measure the features (:func:`measure_unit`),
and write the unit's files atomically: its per-cell rows and its per-well and per-site
aggregates (units hold whole wells, so a well's profile is final once its unit is done). Loaded
models are kept per process. Where the GPU stages run in the main process
(:mod:`pipelines.extract_device`), the worker asks it for Cellpose's segmentations and the
embeddings through a :class:`DeviceLink` and does everything else itself.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cellfeat.images import ImageError, load_site, site_full_scale
from cellfeat.layout import SiteKey, SiteRecord, plate_stem
from pipelines.settings import Settings
from pipelines.tables import write_part

log = logging.getLogger(__name__)

KEYS = ["Metadata_Experiment", "Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber"]


@dataclass(frozen=True)
class Context:
    """What every unit of a run shares; picklable, sent to each worker."""

    settings: Settings
    segmenter: str  # "classical" or "cellpose", resolved once by the main process
    embed: bool
    skip_bad: bool
    provenance: dict


@dataclass(frozen=True)
class Unit:
    """A few whole wells of one plate: their sites (with their files) and where the unit's parts go."""

    experiment: str
    plate: int | str
    cell_type: str | None
    sites: tuple[SiteRecord, ...]
    cells_part: str
    wells_part: str
    sites_part: str
    stats: tuple | None = None  # per-channel (mean, std) of the plate, for crop normalization

    @property
    def name(self) -> str:
        first, last = self.sites[0].key.well, self.sites[-1].key.well
        return f"{self.experiment}/{plate_stem(self.plate)}/{first}-{last}"

    def failures_part(self) -> Path:
        return Path(self.cells_part).with_suffix(".failures.json")


@dataclass
class UnitResult:
    unit: str
    sites: int = 0
    cells: int = 0
    failures: list[dict] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (STAGES) in the process that ran it


# --------------------------------------------------------------------------- where the time goes

# warm-up: compiling or loading the numba kernels, once a process (pipelines.warmup); wait: for the device stage's reply
STAGES = ("warm-up", "load", "segment", "embed", "features", "wait", "aggregate", "write")


class StageClock:
    """Wall seconds this process spent in each stage since the last :meth:`take` (one per process:
    :data:`CLOCK`). Stages do not nest, so their times add up to the busy time."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


CLOCK = StageClock()


# --------------------------------------------------------------------------- per-process state

_STATE: dict[str, object] = {}


def _single_threaded() -> None:
    """Workers run one BLAS/OpenMP/torch thread each: with default threading, two workers
    on two cores ran slower than one."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    _STATE["single_threaded"] = True
    if "torch" in sys.modules:  # else torch is imported only where it is used (_embedder), and set there
        sys.modules["torch"].set_num_threads(1)


def _segmenter(ctx: Context):
    key = "cellpose"
    if ctx.segmenter == "cellpose" and key not in _STATE:
        from pipelines.segment import build_cellpose

        _STATE[key] = build_cellpose(ctx.settings)
    return _STATE.get(key)


def warm_up(ctx: Context, cell_type: str | None) -> None:
    """Once a process, before its first unit: the numba kernels this run uses compiled (each once
    a machine, shared out over the processes) or loaded from the cache (:mod:`pipelines.warmup`)."""
    if "warm" in _STATE:
        return
    from cellfeat.features.registry import FAMILIES
    from pipelines.warmup import lock_dir, run_steps, warm_steps

    settings = ctx.settings
    classical = ctx.segmenter == "classical"
    params = settings.segment.classical_for(cell_type) if classical else None
    if classical:
        diameter = params["nuclei"].diameter
    elif ctx.segmenter == "cellprofiler":  # nuclei of a plausible size for its diameter range
        params = settings.segment.cellprofiler_kwargs()
        primary = settings.segment.cellprofiler.primary
        diameter = float(np.sqrt(primary.min_diameter * primary.max_diameter))
    else:
        diameter = settings.segment.cellpose.diameters_for(cell_type)[0]
    steps = warm_steps(channels=settings.channels.names, families=settings.features.families or tuple(FAMILIES),
                       options=feature_options(dict(settings.features.options), 255), segment_params=params,
                       operations=settings.extract.aggregate, diameter=diameter, segmenter=ctx.segmenter)  # fmt: skip
    with CLOCK("warm-up"):
        try:
            seconds = run_steps(steps, lock_dir())
        except Exception as exc:  # the unit's own first use compiles what is missing; say so, do not fail it
            log.warning("warm-up of the numba kernels failed (%s: %s); each kernel compiles on its first use instead",
                        type(exc).__name__, exc)  # fmt: skip
            seconds = {}
    _STATE["warm"] = seconds
    log.debug("warm-up: %s", ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))


WARM_UP = "(warm-up)"  # the name of a warm_task's result among the units' results


def warm_task(ctx: Context, cell_type: str | None) -> dict[str, float]:
    """A worker's task where a run has fewer units than workers: the warm-up alone, so that the
    idle workers take their share of compiling (:mod:`pipelines.warmup`). Returns its stages."""
    _single_threaded()
    CLOCK.take()
    warm_up(ctx, cell_type)
    return CLOCK.take()


def _embedder(ctx: Context):
    cfg, colors = ctx.settings.embed, ctx.settings.channels.colors
    key = f"embed:{cfg!r}:{colors!r}"
    if key not in _STATE:
        _STATE[key] = cfg.embedder(colors)
        if _STATE.get("single_threaded"):
            sys.modules["torch"].set_num_threads(1)
    return cfg, _STATE[key]


# --------------------------------------------------------------------------- a worker's line to the device stage


@dataclass
class DeviceLink:
    """How a worker reaches the device stage in the main process (:mod:`pipelines.extract_device`):
    it sends requests on ``requests`` (one bounded queue for all workers: a full queue makes
    workers wait, so nothing piles up) and gets the answers back on its own ``replies``. A request
    is a unit's crop windows to embed (``EMBED``) or, where the device stage runs Cellpose
    (``cellpose``), a unit's sites to segment (``SEGMENT``)."""

    index: int
    requests: object  # multiprocessing.Queue of (index, request id, kind, payload)
    replies: object  # multiprocessing.Queue of (request id, answer or an error message)
    cellpose: bool = False
    sent: int = 0

    def ask(self, kind: str, payload) -> int:
        self.sent += 1
        patient(self.requests.put, (self.index, self.sent, kind, payload))
        return self.sent

    def answer(self, request: int):
        """The answer to ``request`` (waited for); the device stage's error raised as RuntimeError."""
        with CLOCK("wait"):
            while True:
                got, answer = patient(self.replies.get)
                if got == request:
                    break
        if isinstance(answer, str):
            raise RuntimeError(f"the device stage failed: {answer}")
        return answer


EMBED, SEGMENT = "embed", "segment"  # the kinds of request


@dataclass
class SegmentRequest:
    """A unit's sites for Cellpose on the device stage: each site's planes as grey levels where
    they are (:func:`cellfeat.crops.compact_planes`), with its scale."""

    cell_type: str | None
    planes: list[np.ndarray]
    scales: list[int]

    def sites(self) -> list[np.ndarray]:
        return [p.astype(np.float32) / np.float32(s) if s else p for p, s in zip(self.planes, self.scales)]


_LINK: DeviceLink | None = None


def orphaned() -> bool:
    """Whether this process's parent (the run's main process) is gone: a device-stage worker then
    stops instead of waiting on queues no one serves (a killed run leaves no process behind)."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    return parent is not None and not parent.is_alive()


def patient(call, *args):
    """``call(*args, timeout=1)`` again and again (a queue's get or put) until it works; exits the
    process if the main process died meanwhile."""
    import queue

    while True:
        try:
            return call(*args, timeout=1.0)
        except (queue.Empty, queue.Full):
            if orphaned():
                os._exit(1)


def set_device_link(link: DeviceLink | None) -> None:
    """Make this process a device-stage worker: its embeddings are computed by the main process."""
    global _LINK
    _LINK = link


@dataclass
class PendingEmbeddings:
    """A unit's embeddings asked of the device stage; :meth:`tables` waits for them."""

    request: int
    presents: list[np.ndarray]
    name: str

    def tables(self) -> list[pd.DataFrame]:
        from cellfeat.crops import site_tables

        return site_tables(self.presents, np.concatenate(_LINK.answer(self.request)), self.name)


def _ask_device(ctx: Context, pixels: list[np.ndarray], segs: list, stats: tuple | None) -> PendingEmbeddings:
    from cellfeat.crops import site_windows
    from cellfeat.embed_config import EmbedError, Normalization, backbone_label

    cfg = ctx.settings.embed
    if cfg.normalization is Normalization.GIVEN and stats is None:
        raise EmbedError("normalization 'given' needs the plate's (mean, std) per channel")
    made = [site_windows(px, seg.cells, cfg.crop_size, mask_outside=cfg.mask_outside,
                         stats=None if cfg.normalization is Normalization.SITE else stats, compact=True)
            for px, seg in zip(pixels, segs)]  # fmt: skip
    request = _LINK.ask(EMBED, [w for w, _ in made])
    return PendingEmbeddings(request, [p for _, p in made], cfg.name or backbone_label(cfg.backbone))


# --------------------------------------------------------------------------- the work


def segment_sites(ctx: Context, sites: list[np.ndarray], cell_type: str | None):
    """Segmentations of ``sites`` (one cell type's): Cellpose in batches, or the classical segmenter."""
    if sites and ctx.segmenter == "cellpose" and _LINK is not None and _LINK.cellpose:  # on the device stage
        from cellfeat.crops import compact_planes

        with CLOCK("segment"):
            compact = [compact_planes(site) for site in sites]
        request = _LINK.ask(SEGMENT, SegmentRequest(cell_type, [c for c, _ in compact], [s for _, s in compact]))
        return _LINK.answer(request)  # clocked as "wait"
    with CLOCK("segment"):
        return _segment_sites(ctx, sites, cell_type)


def _segment_sites(ctx: Context, sites: list[np.ndarray], cell_type: str | None):
    if not sites:
        return []
    segment = ctx.settings.segment
    if ctx.segmenter == "cellpose":
        diameters = segment.cellpose.diameters_for(cell_type)
        batch = segment.cellpose.batch_sites
        out = []
        for start in range(0, len(sites), batch):
            out += _segmenter(ctx).segment_batch(sites[start : start + batch], diameter=diameters, drop_border=segment.drop_border)
        return out
    if ctx.segmenter == "cellprofiler":
        from cellfeat.segment.cellprofiler import segment_site as cellprofiler_site

        params = segment.cellprofiler_kwargs()
        return [cellprofiler_site(s, **params) for s in sites]
    from cellfeat.segment.classical import segment_site

    params = segment.classical_for(cell_type)
    return [segment_site(s, **params) for s in sites]


def feature_options(options: dict, scale: int) -> dict:
    """The families' options for one site: Costes' grey-level grid (Correlation's ``scale_max``) is
    the site's bit depth (:func:`cellfeat.images.site_full_scale`) unless the config sets it."""
    correlation = dict(options.get("Correlation", {}))
    correlation.setdefault("scale_max", int(scale))
    return {**options, "Correlation": correlation}


def _site_table(record: SiteRecord, seg, pixels: np.ndarray, ctx: Context) -> pd.DataFrame:
    # numba, imported here: extract's main process imports this module, its workers measure
    from cellfeat.features.measure import measure_objects

    features, key = ctx.settings.features, record.key
    with CLOCK("features"):
        scale = site_full_scale(record.paths(ctx.settings.channels.names))
        table = measure_objects(
            {"Nuclei": seg.nuclei, "Cells": seg.cells, "Cytoplasm": seg.cytoplasm},
            pixels,
            ctx.settings.channels.names,
            families=features.families,
            options=feature_options(dict(features.options), scale),
        )
    n = len(table)
    table.insert(1, "Metadata_BorderObject", np.asarray(seg.border[:n], bool) if n else np.zeros(0, bool))
    for i, (name, value) in enumerate(zip(KEYS[:4], (key.experiment, key.plate, key.well, key.site))):
        table.insert(i, name, value)
    return table


def _failure(key: SiteKey, stage: str, exc: Exception) -> dict:
    return {"Metadata_Experiment": key.experiment, "Metadata_Plate": key.plate, "Metadata_Well": key.well,
            "Metadata_Site": key.site, "stage": stage, "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip


def _load(record: SiteRecord, ctx: Context, failures: list[dict]) -> np.ndarray | None:
    """One site's pixels; a site that cannot be read is an error, or with ``skip_bad`` recorded."""
    try:
        with CLOCK("load"):
            return load_site(record.paths(ctx.settings.channels.names))
    except (ImageError, FileNotFoundError, OSError, ValueError) as exc:
        if not ctx.skip_bad:
            raise RuntimeError(f"{record.key}: load failed: {exc}") from exc
        failures.append(_failure(record.key, "load", exc))
        return None


@dataclass
class Staged:
    """A unit after its loading, segmentation and embedding stages, before its features.

    ``keys``, ``segmentations``, ``embeddings`` (``None`` each without ``ctx.embed``) and ``pixels``
    hold one entry per site that loaded (``pixels`` None: the sites are loaded again).
    """

    keys: list[SiteRecord]
    segmentations: list
    embeddings: list[pd.DataFrame | None] | PendingEmbeddings  # pending: asked of the device stage
    failures: list[dict]
    pixels: list[np.ndarray] | None = None



def load_unit(unit: Unit, ctx: Context) -> tuple[list[SiteRecord], list[np.ndarray], list[dict]]:
    """The unit's sites that load, their pixels, and the sites skipped (with ``skip_bad``)."""
    records, pixels, failures = [], [], []
    for record in unit.sites:
        px = _load(record, ctx, failures)
        if px is not None:
            records.append(record)
            pixels.append(px)
    return records, pixels, failures


def embed_staged(ctx: Context, pixels: list[np.ndarray], segs: list, stats: tuple | None) -> list[pd.DataFrame | None] | PendingEmbeddings:
    """CNN embeddings of every cell of the given sites of one plate, in shared mini-batches; in a
    device-stage worker, the request for them (the main process's device stage computes them)."""
    if not ctx.embed or not pixels:
        return [None] * len(pixels)
    if _LINK is not None:
        with CLOCK("embed"):
            return _ask_device(ctx, pixels, segs, stats)
    from cellfeat.embed import embed_sites

    with CLOCK("embed"):
        cfg, embedder = _embedder(ctx)
        return embed_sites(embedder, [(px, seg.cells) for px, seg in zip(pixels, segs)], crop_size=cfg.crop_size,
                           mask_outside=cfg.mask_outside, normalization=cfg.normalization, stats=stats)  # fmt: skip


def stage_unit(unit: Unit, ctx: Context) -> Staged:
    """Load, segment and embed the unit's sites, the embedding mini-batches spanning its sites; in
    a device-stage worker, Cellpose and the embeddings are asked of the main process."""
    keys, pixels, failures = load_unit(unit, ctx)
    segs = segment_sites(ctx, pixels, unit.cell_type)
    return Staged(keys, segs, embed_staged(ctx, pixels, segs, unit.stats), failures, pixels=pixels)


def measure_unit(unit: Unit, ctx: Context, staged: Staged) -> tuple[pd.DataFrame, list[SiteKey], list[dict]]:
    """The unit's per-cell table (features, then embeddings), the sites measured (cells or not)
    and the sites it skipped."""
    failures = list(staged.failures)
    pixels = staged.pixels if staged.pixels is not None else [_load(r, ctx, failures) for r in staged.keys]
    measured_tables, measured = [], []
    for i, (record, px, seg) in enumerate(zip(staged.keys, pixels, staged.segmentations)):
        if px is None:  # unreadable on the reload (skip_bad): recorded by _load
            continue
        try:
            measured_tables.append((i, _site_table(record, seg, px, ctx)))
        except (ValueError, FloatingPointError) as exc:
            if not ctx.skip_bad:
                raise RuntimeError(f"{record.key}: features failed: {exc}") from exc
            failures.append(_failure(record.key, "features", exc))
            continue
        measured.append(record.key)
    # the device stage worked on the embeddings meanwhile
    embeddings = staged.embeddings.tables() if isinstance(staged.embeddings, PendingEmbeddings) else staged.embeddings
    tables = []
    for i, table in measured_tables:
        if embeddings[i] is not None:
            table = table.merge(embeddings[i], on="Metadata_ObjectNumber", how="left", validate="one_to_one")
        tables.append(table)
    cells = pd.concat(tables, ignore_index=True) if tables else empty_cells(unit)
    # features and embeddings are float32 already; recasting all of them (cells[f] = ...) would
    # split the frame into one block a column and make every later step pay for thousands
    odd = [c for c, t in cells.dtypes.items() if not c.startswith("Metadata_") and t != np.float32]
    if odd:
        cells = cells.astype({c: np.float32 for c in odd})
    return cells, measured, failures


def empty_cells(unit: Unit) -> pd.DataFrame:
    """A per-cell table without rows, its key columns typed as a unit with cells would have them."""
    plate = pd.Series([], dtype=np.int64 if isinstance(unit.plate, int) else object)
    return pd.DataFrame({"Metadata_Experiment": pd.Series([], dtype=object), "Metadata_Plate": plate,
                         "Metadata_Well": pd.Series([], dtype=object), "Metadata_Site": pd.Series([], dtype=np.int64),
                         "Metadata_ObjectNumber": pd.Series([], dtype=np.int64),
                         "Metadata_BorderObject": pd.Series([], dtype=bool)})  # fmt: skip


def _write(table: pd.DataFrame, path: str) -> None:
    try:
        with CLOCK("write"):
            write_part(table, path)
    except OSError as exc:
        raise RuntimeError(f"cannot write {path}: {type(exc).__name__}: {exc}. Free disk space or fix the output "
                           "folder's permissions, then rerun: finished units are kept") from exc  # fmt: skip


def run_unit(unit: Unit, ctx: Context) -> UnitResult:
    """Process and write one unit; errors are returned, not raised, so the run can list them all.

    The unit's profile tables hold one row for every site measured (a site without cells:
    ``Metadata_CellCount`` 0, NaN features); sites that failed are in its failures instead.
    """
    _single_threaded()
    from cellfeat.aggregate import SITE_KEYS, aggregate_wells  # numba: see _site_table

    start = time.perf_counter()
    CLOCK.take()  # this unit's stages only
    result = UnitResult(unit.name)
    try:
        warm_up(ctx, unit.cell_type)
        cells, measured, failures = measure_unit(unit, ctx, stage_unit(unit, ctx))
        operations = ctx.settings.extract.aggregate
        listed = pd.DataFrame({"Metadata_Experiment": pd.Series([k.experiment for k in measured], dtype=object),
                               "Metadata_Plate": pd.Series([k.plate for k in measured], dtype=cells["Metadata_Plate"].dtype),
                               "Metadata_Well": pd.Series([k.well for k in measured], dtype=object),
                               "Metadata_Site": pd.Series([k.site for k in measured], dtype=np.int64)})  # fmt: skip
        with CLOCK("aggregate"):
            wells = aggregate_wells(cells.drop(columns=["Metadata_Site", "Metadata_ObjectNumber"], errors="ignore"),
                                    operations=operations, wells=listed.drop(columns="Metadata_Site"))  # fmt: skip
            sites = aggregate_wells(cells.drop(columns=["Metadata_ObjectNumber"], errors="ignore"), operations=operations,
                                    keys=SITE_KEYS, wells=listed)  # fmt: skip
        # failures first: a unit counts as done once its cells part exists
        try:
            unit.failures_part().parent.mkdir(parents=True, exist_ok=True)
            unit.failures_part().write_text(json.dumps(failures))
        except OSError as exc:
            raise RuntimeError(f"cannot write {unit.failures_part()}: {exc}. Free disk space or fix the output "
                               "folder's permissions, then rerun") from exc  # fmt: skip
        _write(wells, unit.wells_part)
        _write(sites, unit.sites_part)
        _write(cells, unit.cells_part)
        result.sites = len(measured)
        result.cells = len(cells)
        result.failures = failures
    except Exception as exc:  # reported with the unit's name by the main process
        result.error = f"{exc}\n{traceback.format_exc(limit=3)}" if not isinstance(exc, RuntimeError) else str(exc)
    result.seconds = time.perf_counter() - start
    result.stages = CLOCK.take()
    return result
