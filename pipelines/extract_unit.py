"""One unit of ``cellfeat extract``: a few whole wells of one plate, images to tables.

A worker process (joblib or Dask) runs :func:`run_unit`: load every site of the unit, segment
them (Cellpose in one batch, or the classical segmenter site by site), measure the features,
embed all cells of the unit in shared mini-batches, and write two files atomically: the
unit's per-cell rows and its per-well aggregates (units hold whole wells, so a well's
profile is final once its unit is done). Loaded models are kept per process.
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

from cellfeat.aggregate import aggregate_wells
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


def process_unit(unit: Unit, ctx: Context) -> tuple[pd.DataFrame, list[dict]]:
    """The unit's per-cell table and the sites it skipped (with ``skip_bad``)."""
    order = ctx.config["channels"]["order"]
    keys, pixels, failures = [], [], []

    def fail(key: SiteKey, stage: str, exc: Exception) -> None:
        if not ctx.skip_bad:
            raise RuntimeError(f"{key}: {stage} failed: {exc}") from exc
        failures.append({"Metadata_Experiment": key.experiment, "Metadata_Plate": key.plate, "Metadata_Well": key.well,
                         "Metadata_Site": key.site, "stage": stage, "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip

    for well, site in unit.sites:
        key = SiteKey(unit.experiment, unit.plate, well, site)
        try:
            pixels.append(load_site(site_files(ctx.data_root, key, order)))
            keys.append(key)
        except (ImageError, FileNotFoundError, OSError) as exc:
            fail(key, "load", exc)
    segs = segment_sites(ctx, pixels, unit.cell_type)
    tables, kept = [], []
    for key, px, seg in zip(keys, pixels, segs):
        try:
            tables.append(_site_table(key, seg, px, ctx))
            kept.append((px, seg))
        except (ValueError, FloatingPointError) as exc:
            fail(key, "features", exc)
    if ctx.embed and tables:
        from cellfeat.embed import embed_sites

        cfg, embedder = _embedder(ctx)
        embedded = embed_sites(embedder, [(px, seg.cells) for px, seg in kept], crop_size=cfg.crop_size,
                               mask_outside=cfg.mask_outside, normalization=cfg.normalization, stats=unit.stats)  # fmt: skip
        tables = [t.merge(e, on="Metadata_ObjectNumber", how="left", validate="one_to_one") for t, e in zip(tables, embedded)]
    cells = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=KEYS)
    features = [c for c in cells.columns if not c.startswith("Metadata_")]
    cells[features] = cells[features].astype(np.float32)
    return cells, failures


def run_unit(unit: Unit, ctx: Context) -> UnitResult:
    """Process and write one unit; errors are returned, not raised, so the run can list them all."""
    _single_threaded()
    start = time.perf_counter()
    result = UnitResult(unit.name)
    try:
        cells, failures = process_unit(unit, ctx)
        operations = ctx.config.get("extract", {}).get("aggregate", ["median"])
        listed = pd.DataFrame({"Metadata_Experiment": unit.experiment, "Metadata_Plate": unit.plate,
                               "Metadata_Well": sorted({w for w, _ in unit.sites})})  # fmt: skip
        wells = aggregate_wells(cells.drop(columns=["Metadata_Site", "Metadata_ObjectNumber"], errors="ignore"),
                                operations=operations, wells=listed)  # fmt: skip
        # failures first: a unit counts as done once its cells part exists
        unit.failures_part().parent.mkdir(parents=True, exist_ok=True)
        unit.failures_part().write_text(json.dumps(failures))
        write_parquet(wells, unit.wells_part, ctx.provenance)
        write_parquet(cells, unit.cells_part, ctx.provenance)
        result.sites = len(unit.sites) - len(failures)
        result.cells = len(cells)
        result.failures = failures
    except Exception as exc:  # reported with the unit's name by the main process
        result.error = f"{exc}\n{traceback.format_exc(limit=3)}" if not isinstance(exc, RuntimeError) else str(exc)
    result.seconds = time.perf_counter() - start
    return result
