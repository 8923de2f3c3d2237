"""Per-plate normalization against control wells, and feature selection.

Every plate is normalized by statistics of its own control wells, so a new (test) plate is
treated exactly as the training plates were: nothing about a plate's statistics is learned at
training time. What *is* fitted and saved with the model is the feature selection and the
normalization settings (:class:`PlateNormalizer`).

Methods (pycytominer's names):

* ``mad_robustize``: ``(x - median_ctrl) / (1.4826 * MAD_ctrl + eps)`` (pycytominer ``RobustMAD``);
* ``standardize``: ``(x - mean_ctrl) / (std_ctrl + eps)``;
* optional typical-variation normalization (``tvn=True``): after the per-plate step, PCA
  whitening fitted on the control wells of each experiment (Ando et al. 2017);
* optional sphering (``sphere=True``): after feature selection, regularized ZCA whitening fitted
  on the control wells (or ``sphere_rows``: every well, or a pandas query's rows), of the whole
  table or of each batch (``batch_column``).

Which rows are a plate's controls: RxRx1's well types (``controls``, ``Metadata_WellType``), or
for any table a pandas query (``control_query``, e.g. ``'Metadata_Compound == "DMSO"'``); which
columns name a plate: ``plate_keys``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cellfeat.errors import DataError

PLATE_KEYS = ("Metadata_Experiment", "Metadata_Plate")
METHODS = ("mad_robustize", "standardize")
SCALES = ("plate", "batch", "all")  # whose controls' spread a plate is divided by
MAD_TO_SD = 1.4826  # MAD of a normal distribution times this is its standard deviation


class NormalizationError(DataError):
    """Well tables that cannot be normalized as asked (no controls on a plate, missing columns)."""


def feature_columns(table: pd.DataFrame) -> list[str]:
    """Every column that is not ``Metadata_*`` (pycytominer's convention)."""
    return [c for c in table.columns if not c.startswith("Metadata_")]


def control_rows(table: pd.DataFrame, *, controls: Sequence[str] = ("negative_control", "positive_control"),
                 control_query: str | None = None, name: str = "control query") -> np.ndarray:  # fmt: skip
    """The control rows, as a boolean array: those ``control_query`` selects (a pandas query), or
    else those whose ``Metadata_WellType`` is one of ``controls``."""
    if control_query is None:
        if "Metadata_WellType" not in table.columns:
            raise NormalizationError("well table lacks column(s) ['Metadata_WellType']; cellfeat extract writes it "
                                     "for RxRx1; for other tables select the controls with a query (control_query)")  # fmt: skip
        return table["Metadata_WellType"].isin(list(controls)).to_numpy()
    try:
        chosen = table.eval(control_query)
    except Exception as exc:  # pandas raises many kinds for a bad expression
        raise NormalizationError(f"{name} {control_query!r} is not a pandas query over the table's columns "
                                 f"({type(exc).__name__}: {exc})") from exc  # fmt: skip
    if not isinstance(chosen, pd.Series) or chosen.dtype != bool:
        raise NormalizationError(f"{name} {control_query!r} must give True/False a row, e.g. 'Metadata_Compound == \"DMSO\"'")
    return chosen.to_numpy()


def _check(table: pd.DataFrame, features: Sequence[str], plate_keys: Sequence[str] = PLATE_KEYS) -> None:
    missing = [c for c in plate_keys if c not in table.columns]
    if missing:
        raise NormalizationError(f"well table lacks plate column(s) {missing}; cellfeat extract writes them "
                                 f"(for other tables name the plate column(s): plate_keys / --plate-column)")  # fmt: skip
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
    plate_keys: Sequence[str] = PLATE_KEYS,
    control_query: str | None = None,
    scale: str = "plate",
    batch_column: str | None = None,
) -> pd.DataFrame:
    """Normalize every plate's wells by the statistics of that plate's control wells
    (:func:`control_rows`; a plate: the rows sharing ``plate_keys``).

    Each plate is centred on its controls (median, or mean for ``standardize``). ``scale`` says
    whose controls give the spread it is divided by (MAD, or standard deviation): the plate's own
    (``"plate"``), the plate's batch's, pooled after centring each plate (``"batch"``:
    ``batch_column``'s groups, the whole table without one), or the whole table's (``"all"``).
    A plate's few controls (BBBC021: 6) give a noisy spread; RxRx1's plates (~30 controls, a
    gain of their own) need their own.

    Returns a copy with the feature columns replaced (float32). A plate without any control
    well raises :class:`NormalizationError` naming it: guessing a reference for it would
    silently mis-scale the plate.
    """
    if method not in METHODS:
        raise NormalizationError(f"unknown normalization method {method!r}; choose one of {METHODS}")
    if scale not in SCALES:
        raise NormalizationError(f"unknown scale {scale!r}; choose one of {SCALES}")
    features, plate_keys = list(features), list(plate_keys)
    _check(table, features, plate_keys)
    out = table.copy()
    values = table[features].to_numpy(np.float64)
    result = np.empty_like(values)
    is_control = control_rows(table, controls=controls, control_query=control_query)
    for key, index in table.groupby(plate_keys, sort=False).indices.items():
        ref = values[index[is_control[index]]]
        if len(ref) == 0:
            which = control_query or f"of type {list(controls)}"
            name = " ".join(map(str, key)) if isinstance(key, tuple) else str(key)
            raise NormalizationError(
                f"plate {name} has no control wells ({which}): it cannot be "
                f"normalized against its controls. Include its control wells in the well table "
                f"(cellfeat extract processes them) or choose other controls in the config."
            )
        center, spread = _center_spread(ref, method)
        result[index] = values[index] - center
        if scale == "plate":
            result[index] /= spread + eps
    if scale != "plate":
        for _, index in _groups(table, batch_column if scale == "batch" else None).items():
            _, spread = _center_spread(result[index[is_control[index]]], method)
            result[index] /= spread + eps
    out[features] = result.astype(np.float32)
    return out


def _center_spread(ref: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Per feature: (median, 1.4826 MAD) of ``ref``'s rows, or (mean, standard deviation)."""
    # A feature missing in every control well (e.g. CellProfiler's NormalizedMoment_0_0, NaN by
    # definition) stays NaN; numpy's "All-NaN slice" warning for it says nothing the NaN does not.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if method == "mad_robustize":
            center = np.nanmedian(ref, axis=0)
            return center, MAD_TO_SD * np.nanmedian(np.abs(ref - center), axis=0)
        return np.nanmean(ref, axis=0), np.nanstd(ref, axis=0)


def _groups(table: pd.DataFrame, by: str | None) -> dict:
    """Row positions per value of ``by`` (None: one group of all rows)."""
    if by is None:
        return {None: np.arange(len(table))}
    if by not in table.columns:
        raise NormalizationError(f"well table lacks the batch column {by!r}; name another (batch_column) or none")
    return table.groupby(by, sort=False).indices


def typical_variation(
    table: pd.DataFrame,
    features: Sequence[str],
    *,
    controls: Sequence[str] = ("negative_control", "positive_control"),
    eps: float = 1e-6,
    control_query: str | None = None,
    by: str | None = "Metadata_Experiment",
) -> pd.DataFrame:
    """PCA-whiten each experiment's (each ``by`` group's) wells with the covariance of its control wells."""
    features = list(features)
    out = table.copy()
    values = table[features].to_numpy(np.float64)
    result = np.empty_like(values)
    is_control = control_rows(table, controls=controls, control_query=control_query)
    for exp, index in _groups(table, by).items():
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


def sphere(values: np.ndarray, is_control: np.ndarray, groups: dict, *, regularization: float) -> np.ndarray:
    """Regularized ZCA whitening, one transform a group, fitted on the group's control rows:
    ``(x - mean_c) V diag(1 / sqrt(l + r)) V^T`` with ``V, l`` the eigenvectors and eigenvalues
    of the controls' covariance and ``r = regularization * mean(l)``. Without ``r`` a covariance
    of fewer controls than features is singular and the whitening blows up its noise directions
    (pycytominer's ZCA-cor with epsilon 1e-6 on BBBC021: NSC 0.175, scripts/bench_bbbc021.py)."""
    values = np.nan_to_num(np.asarray(values, np.float64))
    out = np.empty_like(values)
    for key, index in groups.items():
        ref = values[index[is_control[index]]]
        if len(ref) < 2:
            raise NormalizationError(f"batch {key} has fewer than 2 rows to fit sphering on (its control wells, or "
                                     f"sphere_rows'): sphering needs their covariance")  # fmt: skip
        mean = ref.mean(axis=0)
        covariance = np.cov(ref - mean, rowvar=False).reshape(values.shape[1], values.shape[1])
        eigenvalues, vectors = np.linalg.eigh(covariance)
        eigenvalues = np.clip(eigenvalues, 0, None)
        r = regularization * max(float(eigenvalues.mean()), 1e-12)
        transform = (vectors / np.sqrt(eigenvalues + r)) @ vectors.T
        out[index] = (values[index] - mean) @ transform
    return out


def harmonize(values: np.ndarray, batches: pd.Series, *, components: int, seed: int = 0) -> np.ndarray:
    """Harmony (``harmonypy``, Korsunsky et al. 2019) on the rows' top principal components, the
    correction projected back onto the features: ``X + (Z_harmony - Z) V^T`` with ``Z = X_c V``,
    ``V`` the top ``components`` right singular vectors of the centred rows. What lies outside
    those components is left as it was, and the columns keep their names. Harmony is
    transductive: the rows given are corrected together (all batches at once)."""
    try:
        import harmonypy
    except ImportError as exc:
        raise NormalizationError(
            "harmony = true needs harmonypy: pip install 'cellfeat[profiles]' (or pip install harmonypy)"
        ) from exc
    values = np.nan_to_num(np.asarray(values, np.float64))
    if batches.nunique() < 2:
        raise NormalizationError(f"Harmony needs 2 or more batches in {batches.name!r}; the rows hold {batches.nunique()}")
    centred = values - values.mean(axis=0)
    k = max(1, min(components, len(values) - 1, values.shape[1]))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    basis = vt[:k].T
    scores = centred @ basis
    meta = pd.DataFrame({"batch": batches.astype(str).to_numpy()})
    logging.getLogger("harmonypy").setLevel(logging.WARNING)
    corrected = np.asarray(harmonypy.run_harmony(scores, meta, ["batch"], random_state=seed, verbose=False).Z_corr)
    if corrected.shape != scores.shape:  # harmonypy < 2 returned components x rows
        raise NormalizationError(f"harmonypy {getattr(harmonypy, '__version__', '?')} returned {corrected.shape} for "
                                 f"{scores.shape}: install harmonypy>=2")  # fmt: skip
    return values + (corrected - scores) @ basis.T


DEFAULT_BLOCKLIST = ("Location_", "_Center_", "Number_Object_Number", "Parent_", "Children_", "ObjectNumber")


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
    """Per-plate control normalization, feature selection and optional batch correction, as one
    fit/transform pair: ``cellfeat fit``'s and ``cellfeat normalize``'s (one normalizer).

    ``fit`` chooses the features on the training wells (after per-plate normalization);
    ``transform`` normalizes any wells (each plate by its own controls, each batch sphered with
    its own controls' covariance) and returns the selected features. Nothing about a plate's or
    a batch's statistics is learned at fit time, so new plates are treated as the training plates
    were. Fitted attributes end in ``_``.

    ``blocklist``: substrings of feature names dropped before selection (positions of objects
    in the image carry no biology: CellProfiler's ``Location_*``, ``AreaShape_Center_*``).
    """

    method: str = "mad_robustize"
    controls: tuple[str, ...] = ("negative_control", "positive_control")
    control_query: str | None = None  # a pandas query for the control rows; overrides controls
    plate_keys: tuple[str, ...] = PLATE_KEYS
    scale: str = "batch"  # whose controls' spread: "plate", "batch" (batch_column's, or the table's), "all"
    tvn: bool = False
    sphere: bool = True
    sphere_regularization: float = 5.0
    sphere_rows: str = "controls"  # the rows sphering is fitted on: "controls", "all", or a pandas query
    batch_column: str | None = None  # the batches scale and sphere work in (None: the whole table is one)
    harmony: bool = False  # Harmony across batch_column's batches after sphering (transductive; needs harmonypy)
    harmony_components: int = 50
    blocklist: tuple[str, ...] = DEFAULT_BLOCKLIST
    max_missing: float = 0.05
    max_correlation: float = 0.95
    clip: float | None = 50.0
    eps: float = 1e-6
    features_in_: list[str] = field(default_factory=list)
    features_: list[str] = field(default_factory=list)

    def _controls(self, table: pd.DataFrame) -> np.ndarray:
        return control_rows(table, controls=self.controls, control_query=self.control_query)

    def _sphere_rows(self, table: pd.DataFrame) -> np.ndarray:
        if self.sphere_rows == "controls":
            return self._controls(table)
        if self.sphere_rows == "all":
            return np.ones(len(table), bool)
        return control_rows(table, control_query=self.sphere_rows, name='sphere_rows ("controls", "all" or a query)')

    def _normalize(self, table: pd.DataFrame, features: list[str]) -> pd.DataFrame:
        out = normalize_plates(table, features, method=self.method, controls=self.controls, eps=self.eps,
                               plate_keys=self.plate_keys, control_query=self.control_query, scale=self.scale,
                               batch_column=self.batch_column)  # fmt: skip
        if self.tvn:
            out = typical_variation(out, features, controls=self.controls, eps=self.eps, control_query=self.control_query,
                                    by="Metadata_Experiment" if self.batch_column is None else self.batch_column)  # fmt: skip
        if self.clip is not None:
            out[features] = out[features].clip(-self.clip, self.clip)
        return out

    def fit(self, table: pd.DataFrame, features: Sequence[str] | None = None) -> PlateNormalizer:
        features = list(features) if features is not None else feature_columns(table)
        self.features_in_ = [f for f in features if not any(b in f for b in self.blocklist)]
        if not self.features_in_:
            raise NormalizationError(f"the blocklist {list(self.blocklist)} leaves no feature")
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
        out = normalized[meta + self.features_]
        if self.sphere:
            values = sphere(out[self.features_].to_numpy(np.float64), self._sphere_rows(table), _groups(table, self.batch_column),
                            regularization=self.sphere_regularization)  # fmt: skip
            out = pd.concat([out[meta].reset_index(drop=True), pd.DataFrame(values.astype(np.float32), columns=self.features_)],
                            axis=1).set_axis(table.index)  # fmt: skip
        if self.harmony:
            if self.batch_column is None or self.batch_column not in table.columns:
                raise NormalizationError(f"harmony corrects across batches: name the batch column (batch_column, "
                                         f"--batch-column); got {self.batch_column!r}")  # fmt: skip
            values = harmonize(out[self.features_].to_numpy(np.float64), table[self.batch_column],
                               components=self.harmony_components)  # fmt: skip
            out = out.copy()
            out[self.features_] = values.astype(np.float32)
        return out
