"""Per-plate normalization against control wells, and feature selection.

Every plate is normalized by statistics of its own control wells, so a new (test) plate is
treated exactly as the training plates were: nothing about a plate's statistics is learned at
training time. What *is* fitted and saved with the model is the feature selection and the
normalization settings (:class:`PlateNormalizer`).

Methods (pycytominer's names):

* ``mad_robustize``: ``(x - median_ctrl) / (1.4826 * MAD_ctrl + eps)`` (pycytominer ``RobustMAD``);
* ``standardize``: ``(x - mean_ctrl) / (std_ctrl + eps)``;
* optional typical-variation normalization (``tvn=True``): after the per-plate step, PCA
  whitening fitted on the control wells of each experiment (Ando et al. 2017).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cellfeat.errors import DataError

PLATE_KEYS = ("Metadata_Experiment", "Metadata_Plate")
METHODS = ("mad_robustize", "standardize")
MAD_TO_SD = 1.4826  # MAD of a normal distribution times this is its standard deviation


class NormalizationError(DataError):
    """Well tables that cannot be normalized as asked (no controls on a plate, missing columns)."""


def feature_columns(table: pd.DataFrame) -> list[str]:
    """Every column that is not ``Metadata_*`` (pycytominer's convention)."""
    return [c for c in table.columns if not c.startswith("Metadata_")]


def _check(table: pd.DataFrame, features: Sequence[str]) -> None:
    missing = [c for c in (*PLATE_KEYS, "Metadata_WellType") if c not in table.columns]
    if missing:
        raise NormalizationError(f"well table lacks column(s) {missing}; cellfeat extract writes them")
    absent = [f for f in features if f not in table.columns]
    if absent:
        raise NormalizationError(f"{len(absent)} feature column(s) missing from the well table, e.g. {absent[:3]}")


def normalize_plates(
    table: pd.DataFrame,
    features: Sequence[str],
    *,
    method: str = "mad_robustize",
    controls: Sequence[str] = ("negative_control", "positive_control"),
    eps: float = 1e-6,
) -> pd.DataFrame:
    """Normalize every plate's wells by the statistics of that plate's control wells.

    Returns a copy with the feature columns replaced (float32). A plate without any control
    well of the given types raises :class:`NormalizationError` naming it: guessing a
    reference for it would silently mis-scale the plate.
    """
    if method not in METHODS:
        raise NormalizationError(f"unknown normalization method {method!r}; choose one of {METHODS}")
    features = list(features)
    _check(table, features)
    out = table.copy()
    values = table[features].to_numpy(np.float64)
    result = np.empty_like(values)
    is_control = table["Metadata_WellType"].isin(list(controls)).to_numpy()
    for key, index in table.groupby(list(PLATE_KEYS), sort=False).indices.items():
        ref = values[index[is_control[index]]]
        if len(ref) == 0:
            raise NormalizationError(
                f"plate {key[0]} {key[1]} has no control wells of type {list(controls)}: it cannot be "
                f"normalized against its controls. Include its control wells in the well table "
                f"(cellfeat extract processes them) or choose other control types in the config."
            )
        # A feature missing in every control well of the plate (e.g. CellProfiler's
        # NormalizedMoment_0_0, NaN by definition) stays NaN on the plate; numpy's
        # "All-NaN slice" warning for it says nothing the NaN does not.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if method == "mad_robustize":
                center = np.nanmedian(ref, axis=0)
                scale = MAD_TO_SD * np.nanmedian(np.abs(ref - center), axis=0)
            else:
                center = np.nanmean(ref, axis=0)
                scale = np.nanstd(ref, axis=0)
        result[index] = (values[index] - center) / (scale + eps)
    out[features] = result.astype(np.float32)
    return out


def typical_variation(
    table: pd.DataFrame,
    features: Sequence[str],
    *,
    controls: Sequence[str] = ("negative_control", "positive_control"),
    eps: float = 1e-6,
) -> pd.DataFrame:
    """PCA-whiten each experiment's wells with the covariance of its control wells."""
    features = list(features)
    out = table.copy()
    values = table[features].to_numpy(np.float64)
    result = np.empty_like(values)
    is_control = table["Metadata_WellType"].isin(list(controls)).to_numpy()
    for exp, index in table.groupby("Metadata_Experiment", sort=False).indices.items():
        ref = np.nan_to_num(values[index[is_control[index]]])
        if len(ref) < 2:
            raise NormalizationError(f"experiment {exp} has fewer than 2 control wells: typical variation normalization needs more")
        mean = ref.mean(axis=0)
        _, s, vt = np.linalg.svd(ref - mean, full_matrices=False)
        var = s**2 / max(len(ref) - 1, 1)
        whitened = (np.nan_to_num(values[index]) - mean) @ vt.T / np.sqrt(var + eps)
        full = np.zeros((len(index), len(features)))
        full[:, : whitened.shape[1]] = whitened  # fewer controls than features: rank-limited
        result[index] = full
    out[features] = result.astype(np.float32)
    return out


def select_features(
    table: pd.DataFrame,
    features: Sequence[str],
    *,
    max_missing: float = 0.05,
    min_std: float = 1e-6,
    max_correlation: float = 0.95,
    max_rows: int = 20000,
    seed: int = 0,
) -> list[str]:
    """Drop features that are mostly missing, constant, or highly correlated with another.

    Correlation pruning follows pycytominer's ``correlation_threshold``: of each pair above
    ``max_correlation`` the feature with the larger mean absolute correlation to all others
    is dropped. Computed on at most ``max_rows`` rows (a seeded sample).
    """
    features = list(features)
    sample = table[features]
    if len(sample) > max_rows:
        sample = sample.sample(max_rows, random_state=seed)
    values = sample.to_numpy(np.float64, copy=True)
    values[~np.isfinite(values)] = np.nan
    keep = np.isnan(values).mean(axis=0) <= max_missing
    with warnings.catch_warnings():  # all-NaN columns: std NaN -> 0 -> dropped, no warning needed
        warnings.simplefilter("ignore", RuntimeWarning)
        keep &= np.nan_to_num(np.nanstd(values, axis=0)) > min_std
    kept = [f for f, k in zip(features, keep) if k]
    if max_correlation >= 1.0 or len(kept) < 2:
        return kept
    x = values[:, keep]
    x = np.where(np.isnan(x), np.nanmedian(x, axis=0), x)
    corr = np.abs(np.corrcoef(x, rowvar=False))
    np.fill_diagonal(corr, 0.0)
    mean_corr = corr.mean(axis=0)
    rows, cols = np.nonzero(np.triu(corr > max_correlation, k=1))
    order = np.argsort(-corr[rows, cols], kind="stable")
    dropped = np.zeros(len(kept), bool)
    for i, j in zip(rows[order], cols[order]):
        if dropped[i] or dropped[j]:
            continue
        dropped[i if mean_corr[i] >= mean_corr[j] else j] = True
    return [f for f, d in zip(kept, dropped) if not d]


@dataclass
class PlateNormalizer:
    """Feature selection plus per-plate control normalization, as one fit/transform pair.

    ``fit`` chooses the features on the training wells (after per-plate normalization);
    ``transform`` normalizes any wells (each plate by its own controls) and returns the
    selected features. Fitted attributes end in ``_``.
    """

    method: str = "mad_robustize"
    controls: tuple[str, ...] = ("negative_control", "positive_control")
    tvn: bool = False
    max_missing: float = 0.05
    max_correlation: float = 0.95
    clip: float | None = 50.0
    eps: float = 1e-6
    features_in_: list[str] = field(default_factory=list)
    features_: list[str] = field(default_factory=list)

    def _normalize(self, table: pd.DataFrame, features: list[str]) -> pd.DataFrame:
        out = normalize_plates(table, features, method=self.method, controls=self.controls, eps=self.eps)
        if self.tvn:
            out = typical_variation(out, features, controls=self.controls, eps=self.eps)
        if self.clip is not None:
            out[features] = out[features].clip(-self.clip, self.clip)
        return out

    def fit(self, table: pd.DataFrame, features: Sequence[str] | None = None) -> PlateNormalizer:
        self.features_in_ = list(features) if features is not None else feature_columns(table)
        normalized = self._normalize(table, self.features_in_)
        self.features_ = select_features(
            normalized, self.features_in_, max_missing=self.max_missing, max_correlation=self.max_correlation
        )
        if not self.features_:
            raise NormalizationError("feature selection kept no feature: every one was constant, missing or redundant")
        return self

    def transform(self, table: pd.DataFrame) -> pd.DataFrame:
        if not self.features_:
            raise NormalizationError("PlateNormalizer is not fitted: call fit() first")
        absent = [f for f in self.features_in_ if f not in table.columns]
        if absent:
            raise NormalizationError(
                f"the well table lacks {len(absent)} feature(s) the model was trained on, e.g. {absent[:3]}: "
                f"extract it with the same config as the training data"
            )
        normalized = self._normalize(table, self.features_in_)
        meta = [c for c in table.columns if c.startswith("Metadata_")]
        return normalized[meta + self.features_]
