"""One unit of ``cellfeat extract``: a few whole wells of one plate, images to tables.

A worker process (joblib or Dask) runs :func:`run_unit`: load every site of the unit, segment
them (Cellpose in one batch, or the classical segmenter site by site), embed all cells of the
unit in shared mini-batches (:func:`stage_units`), measure the features (:func:`measure_unit`),
and write two files atomically: the unit's per-cell rows and its per-well aggregates (units
hold whole wells, so a well's profile is final once its unit is done). Loaded models are kept
per process. Where the GPU stages run in the main process (:mod:`pipelines.extract_device`),
it calls :func:`stage_units` on several units at once and hands each worker its unit staged.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cellfeat.aggregate import SITE_KEYS, aggregate_wells
from cellfeat.features.measure import measure_objects
from cellfeat.images import ImageError, load_site
from cellfeat.layout import SiteKey, site_files
from pipelines.tables import write_parquet

log = logging.getLogger(__name__)

KEYS = ["Metadata_Experiment", "Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber"]


@dataclass(frozen=True)
class Context:
    """What every unit of a run shares; picklable, sent to each worker."""

    data_root: str
    config: dict
    segmenter: str  # "classical" or "cellpose", resolved once by the main process
    embed: bool
    skip_bad: bool
    provenance: dict


@dataclass(frozen=True)
class Unit:
    experiment: str
    plate: int
    cell_type: str
    sites: tuple[tuple[str, int], ...]  # (well, site)
    cells_part: str
    wells_part: str
    sites_part: str
    stats: tuple | None = None  # per-channel (mean, std) of the plate, for crop normalization

    @property
    def name(self) -> str:
        return f"{self.experiment}/Plate{self.plate}/{self.sites[0][0]}-{self.sites[-1][0]}"

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


# --------------------------------------------------------------------------- per-process state

_STATE: dict[str, object] = {}


def _single_threaded() -> None:
    """Workers run one BLAS/OpenMP/torch thread each: with default threading, two workers
    on two cores ran slower than one."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def _segmenter(ctx: Context):
    key = "cellpose"
    if ctx.segmenter == "cellpose" and key not in _STATE:
        from pipelines.segment import build_cellpose

        _STATE[key] = build_cellpose(ctx.config)
    return _STATE.get(key)


def _embedder(ctx: Context):
    from cellfeat.embed import EmbedConfig

    cfg = EmbedConfig.from_table(ctx.config.get("embed", {}))
    key = f"embed:{json.dumps(ctx.config.get('embed', {}), sort_keys=True)}"
    if key not in _STATE:
        _STATE[key] = cfg.embedder(len(ctx.config["channels"]["order"]))
    return cfg, _STATE[key]


# --------------------------------------------------------------------------- the work


def channel_names(config: dict) -> list[str]:
    return [f"w{n}" for n in config["channels"]["order"]]


def segment_sites(ctx: Context, sites: list[np.ndarray], cell_type: str):
    if not sites:
        return []
    from pipelines.segment import cellpose_diameters, classical_params

    if ctx.segmenter == "cellpose":
        drop = bool(ctx.config.get("segment", {}).get("drop_border", False))
        batch = int(ctx.config.get("segment", {}).get("cellpose", {}).get("batch_sites", 16))
        diameters = cellpose_diameters(ctx.config, cell_type)
        out = []
        for start in range(0, len(sites), batch):
            out += _segmenter(ctx).segment_batch(sites[start : start + batch], diameter=diameters, drop_border=drop)
        return out
    from cellfeat.segment.classical import segment_site

    params = classical_params(ctx.config, cell_type)
    return [segment_site(s, **params) for s in sites]


def _site_table(key: SiteKey, seg, pixels: np.ndarray, ctx: Context) -> pd.DataFrame:
    features = ctx.config.get("features", {})
    table = measure_objects(
        {"Nuclei": seg.nuclei, "Cells": seg.cells, "Cytoplasm": seg.cytoplasm},
        pixels,
        channel_names(ctx.config),
        families=features.get("families"),
        options=features.get("options") or None,
    )
    n = len(table)
    table.insert(1, "Metadata_BorderObject", np.asarray(seg.border[:n], bool) if n else np.zeros(0, bool))
    for i, (name, value) in enumerate(zip(KEYS[:4], (key.experiment, key.plate, key.well, key.site))):
        table.insert(i, name, value)
    return table


def _failure(key: SiteKey, stage: str, exc: Exception) -> dict:
    return {"Metadata_Experiment": key.experiment, "Metadata_Plate": key.plate, "Metadata_Well": key.well,
            "Metadata_Site": key.site, "stage": stage, "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip


def _load(key: SiteKey, ctx: Context, failures: list[dict]) -> np.ndarray | None:
    """One site's pixels; a site that cannot be read is an error, or with ``skip_bad`` recorded."""
    try:
        return load_site(site_files(ctx.data_root, key, ctx.config["channels"]["order"]))
    except (ImageError, FileNotFoundError, OSError) as exc:
        if not ctx.skip_bad:
            raise RuntimeError(f"{key}: load failed: {exc}") from exc
        failures.append(_failure(key, "load", exc))
        return None


@dataclass
class Staged:
    """A unit after its loading, segmentation and embedding stages, before its features.

    ``keys``, ``segmentations`` and ``embeddings`` (``None`` each without ``ctx.embed``) hold one
    entry per site that loaded; ``pixels`` the same sites' images while they stay in one process
    (:meth:`for_worker` drops them: a worker reloads a site's files rather than receive them).
    """

    keys: list[SiteKey]
    segmentations: list
    embeddings: list[pd.DataFrame | None]
    failures: list[dict]
    pixels: list[np.ndarray] | None = None

    def for_worker(self) -> Staged:
        return Staged(self.keys, self.segmentations, self.embeddings, self.failures)


def load_unit(unit: Unit, ctx: Context) -> tuple[list[SiteKey], list[np.ndarray], list[dict]]:
    """The unit's sites that load, their pixels, and the sites skipped (with ``skip_bad``)."""
    keys, pixels, failures = [], [], []
    for well, site in unit.sites:
        key = SiteKey(unit.experiment, unit.plate, well, site)
        px = _load(key, ctx, failures)
        if px is not None:
            keys.append(key)
            pixels.append(px)
    return keys, pixels, failures


def embed_staged(ctx: Context, pixels: list[np.ndarray], segs: list, stats: tuple | None) -> list[pd.DataFrame | None]:
    """CNN embeddings of every cell of the given sites of one plate, in shared mini-batches."""
    if not ctx.embed or not pixels:
        return [None] * len(pixels)
    from cellfeat.embed import embed_sites

    cfg, embedder = _embedder(ctx)
    return embed_sites(embedder, [(px, seg.cells) for px, seg in zip(pixels, segs)], crop_size=cfg.crop_size,
                       mask_outside=cfg.mask_outside, normalization=cfg.normalization, stats=stats)  # fmt: skip


def stage_units(units: list[Unit], ctx: Context, segmentations: list[list] | None = None) -> list[Staged]:
    """Load, segment and embed the sites of ``units`` (one plate's) together, so that Cellpose
    batches and embedding mini-batches span the units: the stages a GPU runs.

    ``segmentations`` (one list per unit, for its sites that load) skips segmenting, e.g. where
    worker processes ran the classical segmenter.
    """
    if len({(u.experiment, u.plate) for u in units}) > 1:
        raise ValueError("stage_units takes units of one plate (they share its normalization statistics)")
    loaded = [load_unit(u, ctx) for u in units]
    pixels = [px for _, pxs, _ in loaded for px in pxs]
    if segmentations is None:
        segs = segment_sites(ctx, pixels, units[0].cell_type)
    else:
        segs = [seg for unit_segs in segmentations for seg in unit_segs]
        if len(segs) != len(pixels):
            raise ValueError(f"{len(segs)} segmentations for {len(pixels)} loaded sites; a site's files changed meanwhile?")
    embeddings = embed_staged(ctx, pixels, segs, units[0].stats)
    staged, start = [], 0
    for keys, pxs, failures in loaded:
        stop = start + len(keys)
        staged.append(Staged(keys, segs[start:stop], embeddings[start:stop], failures, pixels=pxs))
        start = stop
    return staged


def segment_unit(unit: Unit, ctx: Context) -> list:
    """Segmentations of the unit's sites that load (for :func:`stage_units`' ``segmentations``)."""
    _single_threaded()
    keys, pixels, _ = load_unit(unit, ctx)
    return segment_sites(ctx, pixels, unit.cell_type)


def measure_unit(unit: Unit, ctx: Context, staged: Staged) -> tuple[pd.DataFrame, list[dict]]:
    """The unit's per-cell table (features, then embeddings) and the sites it skipped."""
    failures = list(staged.failures)
    pixels = staged.pixels if staged.pixels is not None else [_load(k, ctx, failures) for k in staged.keys]
    tables = []
    for key, px, seg, embedded in zip(staged.keys, pixels, staged.segmentations, staged.embeddings):
        if px is None:  # unreadable on the reload (skip_bad): recorded by _load
            continue
        try:
            table = _site_table(key, seg, px, ctx)
        except (ValueError, FloatingPointError) as exc:
            if not ctx.skip_bad:
                raise RuntimeError(f"{key}: features failed: {exc}") from exc
            failures.append(_failure(key, "features", exc))
            continue
        if embedded is not None:
            table = table.merge(embedded, on="Metadata_ObjectNumber", how="left", validate="one_to_one")
        tables.append(table)
    cells = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=KEYS)
    features = [c for c in cells.columns if not c.startswith("Metadata_")]
    cells[features] = cells[features].astype(np.float32)
    return cells, failures


def run_unit(unit: Unit, ctx: Context, staged: Staged | None = None) -> UnitResult:
    """Process and write one unit; errors are returned, not raised, so the run can list them all.

    ``staged``: the unit's loading, segmentation and embedding already done (by the process
    that holds the GPU); otherwise this process does them too.
    """
    _single_threaded()
    start = time.perf_counter()
    result = UnitResult(unit.name)
    try:
        cells, failures = measure_unit(unit, ctx, staged if staged is not None else stage_units([unit], ctx)[0])
        operations = ctx.config.get("extract", {}).get("aggregate", ["median"])
        listed = pd.DataFrame({"Metadata_Experiment": unit.experiment, "Metadata_Plate": unit.plate,
                               "Metadata_Well": [w for w, _ in unit.sites], "Metadata_Site": [s for _, s in unit.sites]})  # fmt: skip
        wells = aggregate_wells(cells.drop(columns=["Metadata_Site", "Metadata_ObjectNumber"], errors="ignore"),
                                operations=operations, wells=listed.drop(columns="Metadata_Site"))  # fmt: skip
        sites = aggregate_wells(cells.drop(columns=["Metadata_ObjectNumber"], errors="ignore"), operations=operations,
                                keys=SITE_KEYS, wells=listed)  # fmt: skip
        # failures first: a unit counts as done once its cells part exists
        unit.failures_part().parent.mkdir(parents=True, exist_ok=True)
        unit.failures_part().write_text(json.dumps(failures))
        write_parquet(wells, unit.wells_part, ctx.provenance)
        write_parquet(sites, unit.sites_part, ctx.provenance)
        write_parquet(cells, unit.cells_part, ctx.provenance)
        result.sites = len(unit.sites) - len(failures)
        result.cells = len(cells)
        result.failures = failures
    except Exception as exc:  # reported with the unit's name by the main process
        result.error = f"{exc}\n{traceback.format_exc(limit=3)}" if not isinstance(exc, RuntimeError) else str(exc)
    result.seconds = time.perf_counter() - start
    return result
