"""Correlation: colocalization of two channels inside each object, as CellProfiler's MeasureColocalization.

The algorithms are cp_measure's (``core/measurecolocalization.py``, CellProfiler's
MeasureColocalization), per object, on the object's pixel values ``fi`` (first channel) and
``si`` (second channel):

- ``Correlation``: Pearson's r (``numpy.corrcoef``); ``Slope``: cov(fi, si) / var(fi).
- ``Manders_1/_2``, ``Overlap``, ``K_1/_2``, ``RWC_1/_2``: over the pixels where both channels
  reach ``thr`` percent of their object maximum (0 where there is none). RWC weighs each pixel
  by ``(R - |rank_fi - rank_si|) / R`` with dense ranks inside the object.
- ``Costes_1/_2``: Manders' coefficients above Costes' automatic thresholds, found by
  CellProfiler's "Faster" search (a 1/6-window bisection over the ``scale_max`` grey levels on
  the orthogonal-regression line, keeping the lowest threshold whose background Pearson r is
  still >= 0). NaN where Costes is undefined (fewer than 3 pixels, a constant channel, ...).

Keys: ``Correlation_{Feature}_{image}`` with ``_1`` / ``_2`` after the image for the two
directions (``image`` = ``"w1_w2"``: ``_1`` is w1's coefficient, ``_2`` w2's).

Each channel's pixels are gathered object by object once a compartment, for every pair the
channel is in (:func:`channel_in_objects`; the orchestrator shares it), as CellProfiler holds
them, and ranked there: where a channel's values are grey levels ``k / scale_max`` (an 8- or
16-bit file divided by its maximum, possibly rounded to float32 on loading) they are taken as
exactly ``k / scale_max`` in float64, CellProfiler's values; other values as given, in float64.
What a channel needs alone is computed there too, once: per object the dense ranks (from the
grey levels, else one argsort), the mean and centred sum of squares (two passes, as
``numpy.corrcoef``), the threshold at ``thr`` percent of the maximum and the sum above it. A pair
then takes one pass for Pearson's covariance and the thresholded coefficients, and Costes'
search (:mod:`cellfeat.features.costes`) one branch-free pass of exact integer sums of the levels
per bisection step, whose background r is judged by its exact sign (two float passes where the
values are not levels). It matches cp_measure run on CellProfiler's float64 values to rounding
(~1e-12 relative). (Before 2026-12-05 the float32-rounded values were used as they were: Costes'
thresholds then cut between a level and its float32 rounding, and on 3 real sites
30-53% of the nuclei's Costes values differed from CellProfiler's.)

Where Costes can differ: the search branches on the sign of the background r, and on a few
objects a candidate subset has r = 0 exactly (e.g. three pixels (31, 29, 30) / (36, 36, 39) of
255). scipy's ``pearsonr`` then returns about -2e-17, this kernel 0.0, so the searches part and
one object gets NaN where the other gets a value (or another threshold). Neither is more
CellProfiler than the other: the sign is rounding noise. The tests flag those objects by
re-running cp_measure's search with scipy and checking that it met |r| < 1e-12.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from cellfeat.features.costes import costes
from cellfeat.features.primitives import argsort, as_labels, layout

FEATURES = (
    "Correlation",
    "Slope",
    "Overlap",
    "K_1",
    "K_2",
    "Manders_1",
    "Manders_2",
    "RWC_1",
    "RWC_2",
    "Costes_1",
    "Costes_2",
)


def correlation(
    labels: np.ndarray, pixels: np.ndarray, *, thr: float = 15, scale_max: int = 255, geometry: tuple | None = None,
    levels: tuple | None = None, channels: tuple | None = None,
) -> dict[str, np.ndarray]:
    """Colocalization of ``pixels[0]`` and ``pixels[1]`` per object.

    ``pixels`` is a ``(2, H, W)`` stack of images in [0, 1]; ``thr`` is the percentage of each
    object's maximum above which a pixel counts for Manders/Overlap/K/RWC; ``scale_max`` is the
    acquisition's maximum grey value (255 for RxRx1's 8-bit PNGs, 65535 for 16-bit files), which sets
    Costes' grid; ``cellfeat extract`` takes it from each site's files (:func:`cellfeat.images.full_scale`).
    Where the caller already has them: ``geometry`` (:func:`correlation_geometry` of the labels),
    ``levels`` (the two planes' :func:`grey_levels` at this ``scale_max``), or ``channels`` (the
    two planes' :func:`channel_in_objects`, which hold both).
    """
    pixels = np.asarray(pixels)
    labels = np.asarray(labels)
    if pixels.ndim != 3 or pixels.shape[0] != 2 or pixels.shape[1:] != labels.shape:
        raise ValueError(
            f"correlation needs a (2, H, W) pixel stack matching labels {labels.shape}, got {pixels.shape}"
        )
    if channels is None:
        if geometry is None:
            geometry = correlation_geometry(labels)
        if levels is None:
            levels = (None, None)
        channels = tuple(
            channel_in_objects(labels, pixels[c], scale_max=scale_max, thr=thr, geometry=geometry, levels=levels[c])
            for c in (0, 1)
        )
    first, second = channels
    if first.scale_max != int(scale_max) or second.scale_max != int(scale_max):
        raise ValueError(f"channels were gathered at scale_max {first.scale_max} / {second.scale_max}, not {scale_max}")
    if first.thr != float(thr) or second.thr != float(thr):
        raise ValueError(f"channels were gathered for thr {first.thr} / {second.thr}, not {thr}")
    offsets = first.offsets
    n = int(labels.max(initial=0))
    if second.offsets is not offsets and not np.array_equal(second.offsets, offsets) or offsets.size - 1 != n:
        raise ValueError("channels were gathered for other labels; compute them with channel_in_objects(labels, plane)")
    both_levels = first.levels and second.levels
    values = _colocalization(offsets, int(scale_max), first.values, first.codes, first.ranks, first.top, first.stats,
                             second.values, second.codes, second.ranks, second.top, second.stats, both_levels)  # fmt: skip
    return {_key(name): np.ascontiguousarray(values[:, i]) for i, name in enumerate(FEATURES)}


class ObjectChannel(NamedTuple):
    """One channel's pixels inside a compartment's objects, in segment order (object by object,
    raster order within an object; object ``k`` at ``offsets[k]:offsets[k + 1]``): the values as
    CellProfiler holds them, their grey-level codes (where ``levels``: the values are exactly
    ``code / scale_max``), dense ranks within each object and each object's top rank; and what
    every pair needs of this channel alone, per object: the mean, the centred sum of squares,
    ``thr`` percent of the maximum and the sum of the values at or above it."""

    offsets: np.ndarray
    values: np.ndarray
    codes: np.ndarray
    ranks: np.ndarray
    top: np.ndarray
    stats: np.ndarray  # (n, 4): mean, sum (v - mean)**2, thr / 100 * max, sum of v >= that
    levels: bool
    scale_max: int
    thr: float


def channel_in_objects(
    labels: np.ndarray, plane: np.ndarray, *, scale_max: int = 255, thr: float = 15, geometry: tuple | None = None,
    levels: tuple | None = None, **_ignored,
) -> ObjectChannel:
    """What :func:`correlation` needs of one channel in one compartment, the same for every pair
    it is in (the orchestrator computes it once a compartment and channel): the pixels gathered
    object by object and ranked there. ``geometry`` and ``levels`` as in :func:`correlation`."""
    if not 2 <= int(scale_max) <= 2**32 - 1:
        raise ValueError(f"scale_max must be an integer between 2 and 2**32 - 1, got {scale_max}")
    plane = np.asarray(plane)
    if not np.issubdtype(plane.dtype, np.floating):
        plane = plane.astype(np.float64)
    if levels is None:
        levels = grey_levels(plane, scale_max=scale_max)
    codes, ok, exact = levels
    if codes.size != plane.size:
        raise ValueError("levels were computed for other planes; compute them with grey_levels(plane, scale_max=...)")
    order, offsets = correlation_geometry(labels) if geometry is None else geometry
    if np.shape(labels) != plane.shape or offsets.size - 1 != int(np.max(labels, initial=0)) or order.size != np.count_nonzero(labels):
        raise ValueError("geometry was computed for other labels; compute it with correlation_geometry(labels)")
    values, seg_codes, ranks, top = _gather(np.ascontiguousarray(plane).ravel(), codes, bool(ok), bool(exact), order, offsets, int(scale_max))
    stats = _channel_stats(values, offsets, float(thr))
    return ObjectChannel(offsets, values, seg_codes, ranks, top, stats, bool(exact), int(scale_max), float(thr))


def correlation_geometry(labels: np.ndarray, **_ignored) -> tuple[np.ndarray, np.ndarray]:
    """The labelled pixels grouped by object, ``(order, offsets)`` (labels only: the
    orchestrator computes it once a compartment for every channel pair), from the compartment's
    shared :func:`~cellfeat.features.primitives.layout`."""
    lay = layout(labels)
    return lay.order, lay.offsets


def grey_levels(plane: np.ndarray, *, scale_max: int = 255, **_ignored) -> tuple[np.ndarray, bool, bool]:
    """A plane's grey levels: ``rint(v * scale_max)`` per pixel (flat), whether that code is one-
    to-one with the values, and whether the values are those levels ``k / scale_max`` (exactly or
    rounded to float32), which :func:`correlation` then takes as CellProfiler's float64 values.
    One plane, every compartment and pair: the orchestrator computes it once a channel."""
    plane = np.asarray(plane)
    if not np.issubdtype(plane.dtype, np.floating):
        plane = plane.astype(np.float64)
    if plane.size and (plane.min() < 0 or plane.max() > 1):
        raise ValueError(
            f"correlation expects pixels in [0, 1] (the image divided by its bit depth's maximum), "
            f"got values in [{plane.min()}, {plane.max()}]; load images with cellfeat.images.load_site"
        )
    codes, ok, levels = _level_codes(np.ascontiguousarray(plane).ravel(), int(scale_max))
    return codes, bool(ok), bool(levels)


def _key(name: str) -> str:
    if name.endswith(("_1", "_2")):
        return f"Correlation_{name[:-2]}_{{image}}{name[-2:]}"
    return f"Correlation_{name}_{{image}}"


@njit(cache=True, error_model="numpy")
def _gather(flat, codes, ok, exact, order, offsets, scale):
    """One channel's pixels in segment order: values (grey levels as CellProfiler holds them,
    k / scale in float64, where they are levels), codes, dense ranks within each object (from the
    codes where they are one-to-one, else by sorting) and each object's top rank."""
    n = offsets.size - 1
    total = offsets[n]
    values = np.empty(total)
    seg_codes = np.empty(total, np.uint16)  # small types: fewer fresh pages to fault in
    ranks = np.empty(total, np.int32)
    top = np.zeros(n, np.int64)
    present = np.zeros(scale + 1 if ok else 1, np.int64)
    for i in range(total):
        p = order[i]
        c = codes[p]
        seg_codes[i] = c
        values[i] = c / scale if exact else flat[p]
    for obj in range(n):
        s, e = offsets[obj], offsets[obj + 1]
        if e > s:
            top[obj] = _dense_ranks(values[s:e], seg_codes[s:e] if ok else seg_codes[s:s], present, ranks[s:e])
    return values, seg_codes, ranks, top


@njit(cache=True, error_model="numpy")
def _channel_stats(values, offsets, thr):
    """Per object: the mean, the centred sum of squares (two passes, as ``numpy.corrcoef``),
    ``thr`` percent of the maximum and the sum of the values at or above it (cp_measure's
    ``_*_pair``)."""
    n = offsets.size - 1
    out = np.full((n, 4), np.nan)
    for obj in range(n):
        s, e = offsets[obj], offsets[obj + 1]
        if e == s:
            continue
        mean = 0.0
        vmax = values[s]
        for k in range(s, e):
            mean += values[k]
            vmax = max(vmax, values[k])
        mean /= e - s
        ss = 0.0
        above = 0.0
        cut = (thr / 100) * vmax
        for k in range(s, e):
            d = values[k] - mean
            ss += d * d
            if values[k] >= cut:
                above += values[k]
        out[obj, 0] = mean
        out[obj, 1] = ss
        out[obj, 2] = cut
        out[obj, 3] = above
    return out


@njit(cache=True, error_model="numpy")
def _colocalization(offsets, scale, v1, c1, r1, top1, st1, v2, c2, r2, top2, st2, both_levels):
    n = offsets.size - 1
    out = np.full((n, 11), np.nan)
    for obj in range(n):
        s, e = offsets[obj], offsets[obj + 1]
        m = e - s
        if m == 0:
            continue
        a = v1[s:e]
        b = v2[s:e]
        _pair_features(a, b, r1[s:e], r2[s:e], max(top1[obj], top2[obj]) + 1, st1[obj], st2[obj], out[obj])
        if both_levels and float(m) * m * scale * scale < 2.0**62:  # integer sums cannot overflow
            out[obj, 9], out[obj, 10] = costes(a, b, scale, c1[s:e], c2[s:e])
        else:
            out[obj, 9], out[obj, 10] = costes(a, b, scale, c1[s:s], c2[s:s])
    return out


@njit(cache=True)
def _level_codes(flat, scale):
    """``rint(v * scale)`` per pixel; whether it is a one-to-one code of the values;
    and whether the values are those levels, ``k / scale`` (exactly, or rounded to float32).

    For images read from ``scale``-bit files (v = k / scale) the code is the file's grey level;
    being monotone and one-to-one, it ranks the values without sorting them.
    """
    codes = np.zeros(flat.size, np.uint16)  # (scale <= 65535; int64 would cost 4x the fresh pages)
    if scale > 65535:
        return codes, False, False
    table = np.full(scale + 1, np.nan)
    levels = True
    for i in range(flat.size):
        v = flat[i]
        c = np.rint(v * scale)
        if not (c >= 0 and c <= scale):
            return codes, False, False
        ci = int(c)
        if np.isnan(table[ci]):
            table[ci] = v
            levels = levels and (v == ci / scale or np.float32(v) == np.float32(ci / scale))
        elif table[ci] != v:
            return codes, False, False
        codes[i] = ci
    return codes, True, levels


@njit(cache=True, error_model="numpy")
def _dense_ranks(v, codes, present, ranks):
    """Dense rank of each value into ``ranks`` (0 = smallest, +1 per distinct larger value).

    Returns the largest rank. With one-to-one level ``codes`` (see :func:`_level_codes`) the
    ranks come from marking the codes present (O(m + code range)); otherwise from an argsort.
    """
    m = v.size
    if codes.size == m and m > 0:
        lo = codes[0]
        hi = codes[0]
        for k in range(m):
            lo = min(lo, codes[k])
            hi = max(hi, codes[k])
        if hi - lo <= 4 * m + 256:
            for k in range(m):
                present[codes[k]] = 1
            r = -1
            for c in range(lo, hi + 1):
                if present[c]:
                    r += 1
                    present[c] = r + 1  # rank + 1, so 0 still means absent
            for k in range(m):
                ranks[k] = present[codes[k]] - 1
            for c in range(lo, hi + 1):
                present[c] = 0
            return r
    idx = argsort(v)  # not numba's argsort: see primitives.sort_pairs
    r = 0
    for k in range(m):
        if k > 0 and v[idx[k]] != v[idx[k - 1]]:
            r += 1
        ranks[idx[k]] = r
    return r


@njit(cache=True, error_model="numpy")
def _pair_features(fi, si, r1, r2, R, st1, st2, row):
    """Pearson's r and the slope (``numpy.corrcoef``'s, clipped to [-1, 1]; ddof=1) and Overlap,
    K1, K2, M1, M2, RWC1, RWC2 (cp_measure's ``_*_pair``) into ``row[0:9]``, in one pass over
    the pair: each channel's mean, centred sum of squares, maximum and thresholded sum come from
    :func:`_channel_stats` (the same sums in the same order as computing them here)."""
    m = fi.size
    mx, sxx, tff, tot_fi = st1[0], st1[1], st1[2], st1[3]
    my, syy, tss, tot_si = st2[0], st2[1], st2[2], st2[3]
    sxy = 0.0
    any_combined = False
    fpsq = 0.0
    spsq = 0.0
    prod = 0.0
    m1 = 0.0
    m2 = 0.0
    w1 = 0.0
    w2 = 0.0
    for k in range(m):
        x = fi[k]
        y = si[k]
        sxy += (x - mx) * (y - my)
        if x >= tff and y >= tss:
            any_combined = True
            fpsq += x * x
            spsq += y * y
            prod += x * y
            m1 += x
            m2 += y
            weight = (R - abs(r1[k] - r2[k])) * 1.0 / R
            w1 += x * weight
            w2 += y * weight
    cxx = sxx / (m - 1)
    cyy = syy / (m - 1)
    cov = sxy / (m - 1)
    r = cov / np.sqrt(cxx) / np.sqrt(cyy)
    row[0] = 1.0 if r > 1.0 else (-1.0 if r < -1.0 else r)  # NaN stays NaN
    row[1] = cov / cxx
    if not any_combined:
        for i in range(2, 9):
            row[i] = 0.0
        return
    row[2] = prod / np.sqrt(fpsq * spsq)
    row[3] = prod / fpsq
    row[4] = prod / spsq
    row[5] = m1 / tot_fi
    row[6] = m2 / tot_si
    row[7] = w1 / tot_fi
    row[8] = w2 / tot_si


# ---------------------------------------------------------------------------------------------
# Plain numpy / scipy reference
# ---------------------------------------------------------------------------------------------


def correlation_reference(
    labels: np.ndarray, pixels: np.ndarray, *, thr: float = 15, scale_max: int = 255
) -> dict[str, np.ndarray]:
    """Slow numpy/scipy version of :func:`correlation` (cp_measure's formulas), for tests."""
    import warnings

    import scipy.stats

    labels = as_labels(labels)
    first = np.asarray(pixels[0], np.float64)
    second = np.asarray(pixels[1], np.float64)
    n = int(labels.max(initial=0))
    out = np.full((n, 11), np.nan)

    def background_r(fi, si, sel):
        if sel.sum() < 3 or np.ptp(fi[sel]) == 0 or np.ptp(si[sel]) == 0:
            return np.nan
        return scipy.stats.pearsonr(fi[sel], si[sel])[0]

    for lab in range(1, n + 1):
        sel = labels == lab
        if not sel.any():
            continue
        fi, si = first[sel], second[sel]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # np.cov of one pixel
            c = np.cov(fi, si)
            out[lab - 1, 0] = np.clip(c[0, 1] / np.sqrt(c[0, 0]) / np.sqrt(c[1, 1]), -1, 1)
            out[lab - 1, 1] = c[0, 1] / c[0, 0]
            tff, tss = (thr / 100) * fi.max(), (thr / 100) * si.max()
            both = (fi >= tff) & (si >= tss)
            if not both.any():
                out[lab - 1, 2:9] = 0.0
            else:
                ft, st = fi[both], si[both]
                prod = np.sum(ft * st)
                fpsq, spsq = np.sum(ft * ft), np.sum(st * st)
                tot_fi, tot_si = fi[fi >= tff].sum(), si[si >= tss].sum()
                r1 = np.unique(fi, return_inverse=True)[1]
                r2 = np.unique(si, return_inverse=True)[1]
                R = max(r1.max(), r2.max()) + 1
                weight = ((R - np.abs(r1 - r2)) / R)[both]
                out[lab - 1, 2:9] = (
                    prod / np.sqrt(fpsq * spsq),
                    prod / fpsq,
                    prod / spsq,
                    ft.sum() / tot_fi,
                    st.sum() / tot_si,
                    (ft * weight).sum() / tot_fi,
                    (st * weight).sum() / tot_si,
                )
            out[lab - 1, 9:] = _costes_reference(fi, si, scale_max, background_r)
    return {_key(name): out[:, i] for i, name in enumerate(FEATURES)}


def _costes_reference(fi, si, scale, background_r):
    nonzero = (fi > 0) | (si > 0)
    if fi.size < 3 or nonzero.sum() < 3 or np.ptp(fi[nonzero]) == 0 or np.ptp(si[nonzero]) == 0:
        return np.nan, np.nan
    fz, sz = fi[nonzero], si[nonzero]
    xvar, yvar, zvar = np.var(fz, ddof=1), np.var(sz, ddof=1), np.var(fz + sz, ddof=1)
    covar = 0.5 * (zvar - (xvar + yvar))
    if abs(covar) <= 8 * np.finfo(float).eps * max(xvar, yvar):
        return np.nan, np.nan
    a = ((yvar - xvar) + np.sqrt((yvar - xvar) ** 2 + 4 * covar**2)) / (2 * covar)
    b = sz.mean() - a * fz.mean()
    left, right = 1, scale
    mid = ((right - left) // (6 / 5)) + left
    lastmid, valid, iterations = 0, None, 0
    while lastmid != mid:
        iterations += 1
        if iterations > 256:
            return np.nan, np.nan
        t1 = mid / scale
        r = background_r(fi, si, (fi < t1) | (si < a * t1 + b))
        if not np.isfinite(r) or r < 0:
            left = mid - 1
        else:
            right, valid = mid + 1, mid
        lastmid = mid
        mid = ((right - left) // (6 / 5 if right - left > 6 else 2)) + left
    if valid is None:
        return np.nan, np.nan
    t1 = (valid - 1) / scale
    t2 = a * t1 + b
    if not np.isfinite(background_r(fi, si, (fi < t1) | (si < t2))):
        return np.nan, np.nan
    tot1, tot2 = fi[fi >= t1].sum(), si[si >= t2].sum()
    if tot1 <= 0 or tot2 <= 0:
        return np.nan, np.nan
    both = (fi > t1) & (si > t2)
    return fi[both].sum() / tot1, si[both].sum() / tot2
