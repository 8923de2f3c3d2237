"""Per-cell rows to per-well and per-site profiles (pycytominer ``aggregate`` conventions).

A well's profile is the median (and/or mean) of each per-cell feature over all its cells,
both sites together, plus ``Metadata_CellCount``; a site's profile the same over the site's
cells (``keys=SITE_KEYS``). With one operation the feature columns keep their names; with
several, each gets the operation as a suffix (``..._median``). :func:`mean_over_sites` turns
site profiles into well profiles (the mean of each well's site profiles).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numba import njit

from cellfeat.features.primitives import median_inplace

WELL_KEYS = ("Metadata_Experiment", "Metadata_Plate", "Metadata_Well")
SITE_KEYS = (*WELL_KEYS, "Metadata_Site")
OPERATIONS = ("median", "mean")


def aggregate_wells(
    cells: pd.DataFrame,
    *,
    operations: Sequence[str] = ("median",),
    keys: Sequence[str] = WELL_KEYS,
    wells: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per well of ``cells`` (or per row of ``wells``: wells without cells get
    ``Metadata_CellCount`` 0 and NaN features). Features: every non-``Metadata_`` column."""
    bad = [op for op in operations if op not in OPERATIONS]
    if bad or not operations:
        raise ValueError(f"aggregation operations must be some of {OPERATIONS}, got {list(operations)}")
    keys = list(keys)
    missing = [k for k in keys if k not in cells.columns]
    if missing:
        raise ValueError(f"per-cell table lacks key column(s) {missing}")
    features = [c for c in cells.columns if not c.startswith("Metadata_")]
    if cells.empty:  # no cell at all: the listed wells with count 0 (groupby of nothing has no shape to join)
        listed = (wells[keys].drop_duplicates() if wells is not None else cells[keys]).sort_values(keys).reset_index(drop=True)
        counts = pd.DataFrame({"Metadata_CellCount": np.zeros(len(listed), np.int64)})
        columns = [f"{c}_{op}" if len(operations) > 1 else c for op in operations for c in features]
        return pd.concat([listed, counts, pd.DataFrame(np.full((len(listed), len(columns)), np.nan, np.float32),
                                                       columns=columns)], axis=1)  # fmt: skip
    codes, groups = pd.MultiIndex.from_frame(cells[keys]).factorize(sort=True)
    order = np.argsort(codes, kind="stable").astype(np.int64)
    starts = np.searchsorted(codes[order], np.arange(len(groups) + 1)).astype(np.int64)
    values = cells[features].to_numpy(np.float32)  # one block: pandas' groupby reduces thousands of columns one by one
    parts = []
    for op in operations:
        reduce = _group_median if op == "median" else _group_mean
        names = [f"{c}_{op}" for c in features] if len(operations) > 1 else features
        parts.append(pd.DataFrame(reduce(values, starts, order).astype(np.float32), columns=names))
    count = pd.DataFrame({"Metadata_CellCount": np.diff(starts).astype(np.int64)})
    profiles = pd.concat([count, *parts], axis=1)  # one concat: thousands of inserts fragment the frame
    profiles.index = pd.MultiIndex.from_tuples(list(groups), names=keys) if len(keys) > 1 else pd.Index(list(groups), name=keys[0])
    if wells is not None:
        index = pd.MultiIndex.from_frame(wells[keys].drop_duplicates())
        profiles = profiles.reindex(index.union(profiles.index, sort=True))
        profiles["Metadata_CellCount"] = profiles["Metadata_CellCount"].fillna(0).astype(np.int64)
    # reset_index() on thousands of columns inserts into a fragmented frame; concat once
    return pd.concat([profiles.index.to_frame(index=False), profiles.reset_index(drop=True)], axis=1)


@njit(cache=True)
def _group_median(values, starts, order):  # pragma: no cover - compiled
    """Per group (rows ``order[starts[g]:starts[g + 1]]``) and column: the median of the non-NaN
    values in float64, NaN where there are none (pandas' ``groupby().median()``, the reference)."""
    n_groups, n_columns = len(starts) - 1, values.shape[1]
    out = np.full((n_groups, n_columns), np.nan)
    buffer = np.empty(values.shape[0])
    for g in range(n_groups):
        for j in range(n_columns):
            k = 0
            for i in range(starts[g], starts[g + 1]):
                v = values[order[i], j]
                if not np.isnan(v):
                    buffer[k] = v
                    k += 1
            if k:  # not numba's np.median: see primitives.sort_pairs
                out[g, j] = median_inplace(buffer[:k])
    return out


@njit(cache=True)
def _group_mean(values, starts, order):  # pragma: no cover - compiled
    """Per group and column: the mean of the non-NaN values, summed in float64. pandas'
    ``groupby().mean()`` (the reference) sums float32 columns in float32 (compensated): the two
    agree to a float32 rounding step."""
    n_groups, n_columns = len(starts) - 1, values.shape[1]
    out = np.full((n_groups, n_columns), np.nan)
    for g in range(n_groups):
        for j in range(n_columns):
            total, k = 0.0, 0
            for i in range(starts[g], starts[g + 1]):
                v = values[order[i], j]
                if not np.isnan(v):
                    total += v
                    k += 1
            if k:
                out[g, j] = total / k
    return out


def mean_over_sites(sites: pd.DataFrame) -> pd.DataFrame:
    """Well profiles from site profiles: each feature's mean over the well's sites that have a
    value (a site without cells has none), ``Metadata_CellCount`` summed, the other
    ``Metadata_`` columns (constant within a well) kept. Rows in the order of the wells'
    first sites."""
    keys = list(WELL_KEYS)
    missing = [k for k in SITE_KEYS if k not in sites.columns]
    if missing:
        raise ValueError(f"site profiles lack key column(s) {missing}")
    features = [c for c in sites.columns if not c.startswith("Metadata_")]
    meta = [c for c in sites.columns if c.startswith("Metadata_") and c not in SITE_KEYS and c != "Metadata_CellCount"]
    grouped = sites.groupby(keys, sort=False)
    parts = [grouped[meta].first()] if meta else []
    if "Metadata_CellCount" in sites.columns:
        parts.append(grouped["Metadata_CellCount"].sum())
    parts.append(grouped[features].mean().astype(np.float32))
    wells = pd.concat(parts, axis=1)
    return pd.concat([wells.index.to_frame(index=False), wells.reset_index(drop=True)], axis=1)
