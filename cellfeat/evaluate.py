"""How well profiles retrieve what they should: NSC / NSCB nearest-neighbour accuracy and mAP.

The field's benchmarks for a profiling pipeline (Ljosa et al. 2013, Ando et al. 2017):

* **NSC / NSCB**: one profile a treatment (the median of its wells, e.g. a compound at one
  concentration); each treatment is given the label (e.g. mechanism of action) of its nearest
  neighbour by cosine similarity among the treatments of *other groups* (not the same compound:
  NSC) and, for NSCB, of other groups *that share no batch with it*. The accuracy is the fraction
  of treatments whose neighbour has their label. Treatments with no allowed neighbour (NSCB: all
  others share a batch) are left out and counted.
* **mAP** (with ``copairs``, the field's library): each non-control well queries the others by
  cosine similarity; its positives are the wells of the same label in another group, its
  negatives the control wells; the average precision, averaged per label, with a permutation
  p-value per label (corrected for the number of labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cellfeat.errors import DataError


class EvaluationError(DataError):
    """Profiles that cannot be evaluated as asked (a missing column, too few treatments)."""


def _need(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c and c not in table.columns]
    if missing:
        raise EvaluationError(f"the profile table lacks the {what} column(s) {missing}; it has metadata "
                              f"{[c for c in table.columns if c.startswith('Metadata_')]}")  # fmt: skip


def treatment_profiles(table: pd.DataFrame, features: Sequence[str], by: Sequence[str], *, label: str,
                       group: str, batch: str | None = None) -> pd.DataFrame:  # fmt: skip
    """One row a treatment (rows sharing the ``by`` columns): the median of each feature over its
    rows, its ``label`` and ``group`` (each must be one value a treatment), and with ``batch`` the
    sorted tuple of the batches its rows come from (``Metadata_Batches``)."""
    by = list(dict.fromkeys(by))
    _need(table, [*by, label, group, batch or ""], "treatment")
    columns = list(dict.fromkeys([*by, label, group, *([batch] if batch else []), *features]))
    table = table[columns].copy()  # one block: a fragmented input makes every groupby step slow
    grouped = table.groupby(by, sort=True, dropna=False)
    for column in (label, group):
        if column not in by and (grouped[column].nunique(dropna=False) > 1).any():
            bad = grouped[column].nunique(dropna=False)
            raise EvaluationError(f"{column} differs within the treatment {bad[bad > 1].index[0]}: a treatment "
                                  f"(rows sharing {by}) must have one {column}")  # fmt: skip
    profiles = grouped[list(features)].median()
    meta = {c: grouped[c].first() for c in (label, group) if c not in by}
    if batch:
        meta["Metadata_Batches"] = grouped[batch].agg(lambda s: tuple(sorted(set(s))))
    # one concat: inserting into a frame of hundreds of columns fragments it
    return pd.concat([pd.DataFrame(meta, index=profiles.index), profiles], axis=1).reset_index()


@dataclass
class Neighbours:
    """The result of :func:`nearest_neighbour_accuracy`."""

    accuracy: float  # over the treatments that had an allowed neighbour
    scored: int  # treatments that had one
    left_out: int  # treatments that had none
    predictions: pd.Series  # the neighbour's label, per treatment (NaN where left out)


def cosine_similarity(values: np.ndarray) -> np.ndarray:
    """Cosine similarity between the rows of ``values`` (a zero row is similar to nothing)."""
    values = np.asarray(values, np.float64)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    unit = np.divide(values, norms, out=np.zeros_like(values), where=norms > 0)
    return unit @ unit.T


def nearest_neighbour_accuracy(profiles: pd.DataFrame, features: Sequence[str], *, label: str, group: str,
                               batches: str | None = None) -> Neighbours:  # fmt: skip
    """NSC (``batches`` None) or NSCB (``batches``: a column of tuples of batches) over treatment
    profiles (:func:`treatment_profiles`)."""
    values = profiles[list(features)].to_numpy(np.float64)
    if not np.isfinite(values).all():
        raise EvaluationError("profiles hold NaN or infinite values: drop or impute those features first "
                              "(cellfeat normalize's feature selection drops features with missing values)")  # fmt: skip
    similarity = cosine_similarity(values)
    groups = profiles[group].to_numpy()
    allowed = groups[:, None] != groups[None, :]
    if batches is not None:
        sets = [frozenset(b) for b in profiles[batches]]
        allowed &= np.array([[not (a & b) for b in sets] for a in sets])
    similarity = np.where(allowed, similarity, -np.inf)
    has = allowed.any(axis=1)
    nearest = similarity.argmax(axis=1)
    labels = profiles[label].to_numpy()
    predicted = pd.Series(np.where(has, labels[nearest], None), index=profiles.index, name="predicted", dtype=object)
    scored = int(has.sum())
    correct = int((labels[has] == labels[nearest][has]).sum())
    return Neighbours(correct / scored if scored else float("nan"), scored, int((~has).sum()), predicted)


def mean_average_precision(table: pd.DataFrame, features: Sequence[str], *, label: str, group: str,
                           controls: pd.Series, null_size: int = 10000, threshold: float = 0.05,
                           seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Per label: copairs' mAP of retrieving the label's wells of other groups against the control
    wells (``controls``: a boolean Series over ``table``'s rows), its p-value and corrected
    p-value, and whether that is below ``threshold``."""
    try:
        from copairs.map import average_precision
        from copairs.map import mean_average_precision as copairs_map
    except ImportError as exc:
        raise EvaluationError("mAP needs copairs: pip install copairs (it comes with cellfeat's dev extra)") from exc
    controls = np.asarray(controls, bool)
    if not controls.any():
        raise EvaluationError("no control rows: mAP retrieves each label against the controls; check --controls")
    meta = table[[label, group]].reset_index(drop=True).copy()
    meta[label], meta[group] = meta[label].astype(str), meta[group].astype(str)
    reference = "Metadata_ReferenceIndex"  # controls: each its own index, never a positive of another row
    meta[reference] = np.where(controls, np.arange(len(meta)), -1)
    feats = table[list(features)].to_numpy(np.float64)
    ap = average_precision(meta, feats, pos_sameby=[label, reference], pos_diffby=[group], neg_sameby=[],
                           neg_diffby=[label, reference], progress_bar=False)  # fmt: skip
    ap = ap[ap[reference] == -1].dropna(subset=["average_precision"])  # the controls query nothing
    if ap.empty:
        raise EvaluationError(f"no well has a positive: every {label} sits in one {group} only")
    return copairs_map(ap, sameby=[label], null_size=null_size, threshold=threshold, seed=seed, progress_bar=False)
