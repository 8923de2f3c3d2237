"""Instance-segmentation quality: object matching by IoU and the DSB/StarDist average precision.

``average_precision(true, pred, threshold)`` is ``TP / (TP + FP + FN)`` where a true and a
predicted object match when their intersection over union reaches ``threshold``, each object
matching at most one other (the definition of the 2018 Data Science Bowl, used by the
StarDist and Cellpose papers). For ``threshold >= 0.5`` a match is unique by construction;
below it the one-to-one matching that maximises the summed IoU is taken.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``(n_true, n_pred)`` IoU of every pair of objects; labels need not be contiguous.

    Row ``i`` belongs to the ``i``-th smallest non-zero label of ``true``, column ``j`` to that
    of ``pred``.
    """
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"label images differ in shape: true {true.shape}, pred {pred.shape}")
    t_ids, t_inv = np.unique(true.ravel(), return_inverse=True)
    p_ids, p_inv = np.unique(pred.ravel(), return_inverse=True)
    counts = np.bincount(t_inv * len(p_ids) + p_inv, minlength=len(t_ids) * len(p_ids))
    counts = counts.reshape(len(t_ids), len(p_ids)).astype(np.float64)
    # drop the background row/column (label 0) when present
    counts = counts[t_ids != 0][:, p_ids != 0]
    area_t = np.bincount(t_inv, minlength=len(t_ids))[t_ids != 0].astype(np.float64)
    area_p = np.bincount(p_inv, minlength=len(p_ids))[p_ids != 0].astype(np.float64)
    union = area_t[:, None] + area_p[None, :] - counts
    return np.divide(counts, union, out=np.zeros_like(counts), where=union > 0)


def match_counts(true: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int]:
    """``(TP, FP, FN)`` of a one-to-one matching at IoU >= ``threshold``."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"IoU threshold must be in (0, 1], got {threshold}")
    iou = iou_matrix(true, pred)
    n_true, n_pred = iou.shape
    if n_true == 0 or n_pred == 0:
        return 0, n_pred, n_true
    eligible = np.where(iou >= threshold, iou, 0.0)
    rows, cols = linear_sum_assignment(eligible, maximize=True)
    tp = int(np.count_nonzero(eligible[rows, cols] > 0))
    return tp, n_pred - tp, n_true - tp


def average_precision(true: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> float:
    """DSB average precision ``TP / (TP + FP + FN)`` at one IoU threshold (1.0 when both are empty)."""
    tp, fp, fn = match_counts(true, pred, threshold)
    total = tp + fp + fn
    return 1.0 if total == 0 else tp / total
