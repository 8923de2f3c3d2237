"""Costes' automatic-threshold colocalization (CellProfiler's MeasureColocalization, "Faster"
search) for one object's two pixel vectors: the kernel of :mod:`cellfeat.features.correlation`'s
``Costes_1`` / ``Costes_2``, which documents the search and where it can differ from cp_measure.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def _background_r(fi, si, t1, t2):
    """Pearson r of the pixels with ``fi < t1 or si < t2`` (NaN: < 3 pixels or a constant channel).

    Two passes (the subset's means, then centred sums), as ``scipy.stats.pearsonr``: the search
    turns on the sign of r, and a one-pass formula leaves ~1e-13 of noise where r is 0.
    """
    m = 0
    sx = 0.0
    sy = 0.0
    xlo = np.inf
    xhi = -np.inf
    ylo = np.inf
    yhi = -np.inf
    for k in range(fi.size):
        x = fi[k]
        y = si[k]
        if x < t1 or y < t2:
            m += 1
            sx += x
            sy += y
            xlo = min(xlo, x)
            xhi = max(xhi, x)
            ylo = min(ylo, y)
            yhi = max(yhi, y)
    if m < 3 or xlo == xhi or ylo == yhi:
        return np.nan
    mx = sx / m
    my = sy / m
    sxx = 0.0
    syy = 0.0
    sxy = 0.0
    for k in range(fi.size):
        if fi[k] < t1 or si[k] < t2:
            dx = fi[k] - mx
            dy = si[k] - my
            sxx += dx * dx
            syy += dy * dy
            sxy += dx * dy
    r = sxy / np.sqrt(sxx * syy)
    return min(1.0, max(-1.0, r))


@njit(cache=True, error_model="numpy")
def _background_sign(fi, si, t1, t2, k1, k2):
    """The sign of :func:`_background_r` (NaN where it is NaN) from the pixels' grey levels
    ``k1``, ``k2`` (the values are ``k / scale``, one-to-one): exact integer sums in one
    branch-free pass. Pearson's r of the subset is ``(m Sxy - Sx Sy) / sqrt(...)`` in the levels;
    its numerator is an exact integer, so the sign is exact (0 where r is exactly 0, which is
    what the float passes give too unless their rounding leaves ~1e-17 of either sign)."""
    m = 0
    sx = 0
    sy = 0
    sxx = 0
    syy = 0
    sxy = 0
    for k in range(fi.size):
        sel = np.int64((fi[k] < t1) | (si[k] < t2))
        x = k1[k] * sel
        y = k2[k] * sel
        m += sel
        sx += x
        sy += y
        sxx += x * x
        syy += y * y
        sxy += x * y
    if m < 3 or m * sxx == sx * sx or m * syy == sy * sy:  # fewer than 3 pixels, or a constant channel
        return np.nan
    num = m * sxy - sx * sy
    return 1.0 if num > 0 else (-1.0 if num < 0 else 0.0)


@njit(cache=True, error_model="numpy")
def costes(fi, si, scale, k1, k2):
    """Costes' coefficients with CellProfiler's "Faster" (bisection) threshold search; where the
    pixels' grey levels ``k1``, ``k2`` are given (else empty), the search's background r is
    judged by its exact sign (:func:`_background_sign`)."""
    levels = k1.size == fi.size
    m = fi.size
    if m < 3:
        return np.nan, np.nan
    for k in range(m):
        if not (np.isfinite(fi[k]) and np.isfinite(si[k])):
            return np.nan, np.nan
    # orthogonal (Deming) regression of si on fi over the pixels where either is non-zero
    nz = 0
    mx = 0.0
    my = 0.0
    xlo = np.inf
    xhi = -np.inf
    ylo = np.inf
    yhi = -np.inf
    for k in range(m):
        if fi[k] > 0 or si[k] > 0:
            nz += 1
            mx += fi[k]
            my += si[k]
            xlo = min(xlo, fi[k])
            xhi = max(xhi, fi[k])
            ylo = min(ylo, si[k])
            yhi = max(yhi, si[k])
    if nz < 3 or xlo == xhi or ylo == yhi:
        return np.nan, np.nan
    mx /= nz
    my /= nz
    sxx = 0.0
    syy = 0.0
    szz = 0.0
    mzs = 0.0
    for k in range(m):
        if fi[k] > 0 or si[k] > 0:
            mzs += fi[k] + si[k]
    mzs /= nz
    for k in range(m):
        if fi[k] > 0 or si[k] > 0:
            sxx += (fi[k] - mx) ** 2
            syy += (si[k] - my) ** 2
            szz += (fi[k] + si[k] - mzs) ** 2
    xvar = sxx / (nz - 1)
    yvar = syy / (nz - 1)
    zvar = szz / (nz - 1)
    covar = 0.5 * (zvar - (xvar + yvar))
    denom = 2 * covar
    num = (yvar - xvar) + np.sqrt((yvar - xvar) * (yvar - xvar) + 4 * (covar * covar))
    if abs(covar) <= 8 * np.finfo(np.float64).eps * max(xvar, yvar):
        return np.nan, np.nan
    a = num / denom
    b = my - a * mx
    if not (np.isfinite(a) and np.isfinite(b)):
        return np.nan, np.nan
    left = 1.0
    right = float(scale)
    # Python's float ``//`` in cp_measure; np.floor(a / b) equals it for these integer-valued a
    mid = np.floor((right - left) / (6 / 5)) + left
    lastmid = 0.0
    valid = -1.0
    iterations = 0
    while lastmid != mid:
        iterations += 1
        if iterations > 256:
            return np.nan, np.nan
        t1 = mid / scale
        t2 = (a * t1) + b
        r = _background_sign(fi, si, t1, t2, k1, k2) if levels else _background_r(fi, si, t1, t2)
        if not np.isfinite(r) or r < 0:
            left = mid - 1
        else:
            right = mid + 1
            valid = mid
        lastmid = mid
        divisor = 6 / 5 if right - left > 6 else 2.0
        mid = np.floor((right - left) / divisor) + left
    if valid < 0:
        return np.nan, np.nan
    t1 = (valid - 1) / scale
    t2 = (a * t1) + b
    if not np.isfinite(_background_sign(fi, si, t1, t2, k1, k2) if levels else _background_r(fi, si, t1, t2)):
        return np.nan, np.nan
    above1 = 0.0
    above2 = 0.0
    tot1 = 0.0
    tot2 = 0.0
    for k in range(m):
        if fi[k] > t1 and si[k] > t2:
            above1 += fi[k]
            above2 += si[k]
        if fi[k] >= t1:
            tot1 += fi[k]
        if si[k] >= t2:
            tot2 += si[k]
    if tot1 <= 0 or tot2 <= 0:
        return np.nan, np.nan
    return above1 / tot1, above2 / tot2
