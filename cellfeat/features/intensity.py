"""MeasureObjectIntensity: per-object intensity statistics of one channel.

CellProfiler's names (``Intensity_*`` and ``Location_*``), cp_measure's definitions
(``cp_measure.core.measureobjectintensity.get_intensity``): population std, numpy "linear"
quartiles (``legacy=True`` for CellProfiler's original ``n * q`` positions and MAD as the
``1/2``-quantile at that convention), edge = inner boundary (4-connected, image edge ignored),
max location = first maximum in raster order. Non-finite pixels are skipped, as cp_measure does.

Speed: the labels' part (pixels grouped by object, rows, columns, which pixels are on the
edge; :func:`intensity_geometry`) is computed once a compartment and each channel's grey levels
(:func:`intensity_levels`) once a site, both shared by the orchestrator. When a channel holds
only the 256 grey levels of an 8-bit image rescaled to [0, 1] (checked exactly), one pass over
each object's level codes fills a 256-bin histogram (and one of its edge pixels), and every
statistic but the intensity-weighted centre comes from one walk over its levels: sums, the
variance (shifted by the lowest level, so a constant object's is exactly 0), quartiles and MAD
without sorting. Other images (more levels, non-finite pixels) take a sorting path. Both give
cp_measure's numbers.

Where we differ: a label with no pixels gets NaN (cp_measure relabels it away); an object with
no finite pixel gets NaN (cp_measure: 0); the Z location features of 2-D images (always 0)
are not emitted.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from cellfeat.features.primitives import (
    Layout,
    layout,
    n_objects,
    sort_inplace,
    sorted_quantile,
)

KEYS = (
    "Intensity_IntegratedIntensity_{image}",
    "Intensity_MeanIntensity_{image}",
    "Intensity_StdIntensity_{image}",
    "Intensity_MinIntensity_{image}",
    "Intensity_MaxIntensity_{image}",
    "Intensity_MassDisplacement_{image}",
    "Intensity_LowerQuartileIntensity_{image}",
    "Intensity_MedianIntensity_{image}",
    "Intensity_MADIntensity_{image}",
    "Intensity_UpperQuartileIntensity_{image}",
    "Location_CenterMassIntensity_X_{image}",
    "Location_CenterMassIntensity_Y_{image}",
    "Location_MaxIntensity_X_{image}",
    "Location_MaxIntensity_Y_{image}",
    "Intensity_IntegratedIntensityEdge_{image}",
    "Intensity_MeanIntensityEdge_{image}",
    "Intensity_StdIntensityEdge_{image}",
    "Intensity_MinIntensityEdge_{image}",
    "Intensity_MaxIntensityEdge_{image}",
)


LEVELS = 255  # 8-bit images (RxRx1, most Cell Painting sets) take the histogram path


@njit(cache=True)
def _level_codes(pixels, levels):
    """``(codes, lut, ok)``: whether every pixel is one of ``levels + 1`` distinct values
    ``k / levels`` up to float rounding (an 8-bit image rescaled to [0, 1]; no NaN or inf), each
    pixel's level ``k`` (uint8, flat) and the exact value of each level as stored (0 for a level
    the image lacks), so per-object statistics come from 256-bin histograms, exactly. Three
    branch-free passes: the codes (and whether each value is near its level), one value per
    level, and whether every pixel equals its level's value."""
    flat = pixels.ravel()
    codes = np.empty(flat.size, np.uint8)
    lut = np.zeros(levels + 1)
    bad = False
    for i in range(flat.size):
        x = flat[i] * levels
        b = np.int64(x + 0.5) if (x > -0.5) & (x < levels + 0.5) else np.int64(0)
        bad |= not (abs(x - b) <= 1e-3)  # also NaN and inf
        codes[i] = b
    if bad:
        return codes, lut, False
    for i in range(flat.size):
        lut[codes[i]] = flat[i]
    for i in range(flat.size):
        bad |= flat[i] != lut[codes[i]]
    return codes, lut, not bad


@njit(cache=True)
def _edge_in_order(edge, order):
    """Whether each labelled pixel (in segment order) is on its object's edge, as 0/1."""
    flat = edge.ravel()
    out = np.empty(order.size, np.uint8)
    for i in range(order.size):
        out[i] = flat[order[i]] != 0
    return out


@njit(cache=True)
def _hist_quartiles(hist, lut, n, legacy, b0, ranks, got):
    """Lower quartile, median and upper quartile from one walk over the histogram. Scratch (no
    allocation per object): ``ranks``, int64 of 12 (the six ranks wanted, then their order);
    ``got``, float64 of 9 (the six values found, then the three interpolation fractions)."""
    want = ranks[:6]
    order = ranks[6:]
    for q in range(3):
        f = 0.25 * (q + 1)
        pos = n * f if legacy else (n - 1) * f
        lo = min(int(pos), n - 1)
        want[2 * q] = lo
        want[2 * q + 1] = min(lo + 1, n - 1)
        got[6 + q] = pos - lo
    for t in range(6):  # the six ranks in increasing order (not sorted as listed for tiny objects)
        order[t] = t
        j = t
        while j > 0 and want[order[j - 1]] > want[order[j]]:
            order[j - 1], order[j] = order[j], order[j - 1]
            j -= 1
    seen = 0
    t = 0
    for b in range(b0, hist.size):
        if hist[b] == 0:
            continue
        seen += hist[b]
        while t < 6 and seen > want[order[t]]:
            got[order[t]] = lut[b]
            t += 1
        if t == 6:
            break
    return (
        got[0] * (1.0 - got[6]) + got[1] * got[6],
        got[2] * (1.0 - got[7]) + got[3] * got[7],
        got[4] * (1.0 - got[8]) + got[5] * got[8],
    )


@njit(cache=True)
def _hist_mad(hist, lut, n, med, legacy, b0):
    """Quantile 1/2 of ``|x - med|`` from the histogram: walk the levels outwards from ``med``."""
    pos = n * 0.5 if legacy else (n - 1) * 0.5
    lo = min(int(pos), n - 1)
    hi = min(lo + 1, n - 1)
    f = pos - lo
    right = b0
    while right < hist.size and (hist[right] == 0 or lut[right] < med):
        right += 1
    left = right - 1
    seen = 0
    dlo = np.nan
    while True:
        while left >= 0 and hist[left] == 0:
            left -= 1
        while right < hist.size and hist[right] == 0:
            right += 1
        dl = abs(lut[left] - med) if left >= 0 else np.inf
        dr = abs(lut[right] - med) if right < hist.size else np.inf
        if dl <= dr:
            d = dl
            seen += hist[left]
            left -= 1
        else:
            d = dr
            seen += hist[right]
            right += 1
        if seen > lo and np.isnan(dlo):
            dlo = d
        if seen > hi:
            return dlo * (1.0 - f) + d * f


@njit(cache=True)
def _store(row, cnt, total, std, vmin, vmax, sy, sx, syi, sxi, lq, med, mad, uq, xmax, ymax, ecnt, esum, estd, emin, emax):
    """One object's row of :data:`KEYS` from its sums (``sy``, ``sx``: of rows and columns;
    ``syi``, ``sxi``: of row and column times intensity) and statistics."""
    cmy = sy / cnt
    cmx = sx / cnt
    cmiy = syi / total if total != 0 else np.nan
    cmix = sxi / total if total != 0 else np.nan
    row[0] = total
    row[1] = total / cnt
    row[2] = std
    row[3] = vmin
    row[4] = vmax
    row[5] = np.sqrt((cmiy - cmy) ** 2 + (cmix - cmx) ** 2)
    row[6] = lq
    row[7] = med
    row[8] = mad
    row[9] = uq
    row[10] = cmix
    row[11] = cmiy
    row[12] = xmax
    row[13] = ymax
    if ecnt > 0:
        row[14] = esum
        row[15] = esum / ecnt
        row[16] = estd
        row[17] = emin
        row[18] = emax
    else:  # cp_measure leaves zeros for an object without edge pixels
        row[14:19] = 0.0


@njit(cache=True)
def _levels_kernel(codes, lut, edge_seg, order, offsets, rows, cols, legacy):
    """All intensity features of an image of grey levels (see :func:`_level_codes`), one label
    slice at a time: one pass over the pixels (histograms, centres), one walk over the levels."""
    n = offsets.size - 1
    out = np.full((n, 19), np.nan)
    hist = np.zeros(lut.size, np.int64)
    ehist = np.zeros(lut.size, np.int64)
    ranks = np.empty(12, np.int64)  # _hist_quartiles' scratch
    got = np.empty(9)
    for k in range(n):
        s, e = offsets[k], offsets[k + 1]
        if s == e:
            continue
        cnt = e - s
        cmin = lut.size
        cmax = -1
        imax = s
        sy = 0
        sx = 0
        syi = 0.0
        sxi = 0.0
        for i in range(s, e):
            c = np.int64(codes[order[i]])
            hist[c] += 1
            ehist[c] += edge_seg[i]
            cmin = min(cmin, c)
            if c > cmax:  # strict: the first maximum in raster order, as numpy.argmax
                cmax = c
                imax = i
            y = rows[i]
            x = cols[i]
            v = lut[c]
            sy += y
            sx += x
            syi += y * v
            sxi += x * v
        base = lut[cmin]  # sums of v - base: a constant object's variance is exactly 0
        total = 0.0
        sd = 0.0
        sd2 = 0.0
        ecnt = 0
        esum = 0.0
        esd = 0.0
        esd2 = 0.0
        emin = cmax
        emax = cmin
        for b in range(cmin, cmax + 1):  # branch-free: an absent level adds 0 (its lut entry is 0)
            hb = hist[b]
            eb = ehist[b]
            v = lut[b]
            d = v - base
            total += hb * v
            sd += hb * d
            sd2 += hb * (d * d)
            ecnt += eb
            esum += eb * v
            esd += eb * d
            esd2 += eb * (d * d)
            emin = min(emin, b if eb else cmax)
            emax = max(emax, b if eb else cmin)
        lq, med, uq = _hist_quartiles(hist, lut, cnt, legacy, cmin, ranks, got)
        mad = _hist_mad(hist, lut, cnt, med, legacy, cmin)
        hist[cmin : cmax + 1] = 0
        ehist[cmin : cmax + 1] = 0
        dm = sd / cnt
        edm = esd / ecnt if ecnt > 0 else 0.0
        _store(out[k], cnt, total, np.sqrt(max(0.0, sd2 / cnt - dm * dm)), lut[cmin], lut[cmax], sy, sx, syi, sxi,
               lq, med, mad, uq, cols[imax], rows[imax], ecnt, esum,
               np.sqrt(max(0.0, esd2 / ecnt - edm * edm)) if ecnt > 0 else 0.0, lut[emin], lut[emax])  # fmt: skip
    return out


@njit(cache=True)
def _values_kernel(pixels, edge, order, offsets, rows, cols, legacy):
    """All intensity features of any image (non-finite pixels skipped), one label slice at a
    time, quantiles by sorting. Returns an ``(n, len(KEYS))`` array."""
    n = offsets.size - 1
    flat = pixels.ravel()
    eflat = edge.ravel()
    out = np.full((n, 19), np.nan)
    maxlen = 0
    for k in range(n):
        maxlen = max(maxlen, offsets[k + 1] - offsets[k])
    buf = np.empty(maxlen, np.float64)
    dev = np.empty(maxlen, np.float64)
    for k in range(n):
        s, e = offsets[k], offsets[k + 1]
        cnt = 0
        total = 0.0
        vmin = np.inf
        vmax = -np.inf
        amax_y = -1
        amax_x = -1
        sy = 0.0
        sx = 0.0
        syi = 0.0
        sxi = 0.0
        ecnt = 0
        esum = 0.0
        emin = np.inf
        emax = -np.inf
        for i in range(s, e):
            p = order[i]
            v = flat[p]
            if not np.isfinite(v):
                continue
            y = rows[i]
            x = cols[i]
            buf[cnt] = v
            cnt += 1
            total += v
            vmin = min(vmin, v)
            if v > vmax:  # strict: first maximum in raster order, as numpy.argmax
                vmax = v
                amax_y = y
                amax_x = x
            sy += y
            sx += x
            syi += y * v
            sxi += x * v
            if eflat[p] != 0:
                ecnt += 1
                esum += v
                emin = min(emin, v)
                emax = max(emax, v)
        if cnt == 0:
            continue
        mean = total / cnt
        ss = 0.0
        ess = 0.0
        emean = esum / ecnt if ecnt > 0 else 0.0
        for i in range(s, e):
            p = order[i]
            v = flat[p]
            if not np.isfinite(v):
                continue
            ss += (v - mean) * (v - mean)
            if eflat[p] != 0:
                ess += (v - emean) * (v - emean)
        seg = buf[:cnt]
        sort_inplace(seg)  # not numba's sort: see primitives.sort_pairs
        lq = sorted_quantile(seg, cnt, 0.25, legacy)
        med = sorted_quantile(seg, cnt, 0.5, legacy)
        uq = sorted_quantile(seg, cnt, 0.75, legacy)
        for i in range(cnt):
            dev[i] = abs(seg[i] - med)
        d = dev[:cnt]
        sort_inplace(d)
        mad = sorted_quantile(d, cnt, 0.5, legacy)
        _store(out[k], cnt, total, np.sqrt(ss / cnt), vmin, vmax, sy, sx, syi, sxi, lq, med, mad, uq, amax_x, amax_y,
               ecnt, esum, np.sqrt(ess / ecnt) if ecnt > 0 else 0.0, emin, emax)  # fmt: skip
    return out


def intensity_geometry(labels: np.ndarray, **_ignored) -> tuple[Layout, np.ndarray]:
    """The labels' part of :func:`intensity`: the segment layout and, in its order, which pixels
    lie on their object's edge. The orchestrator computes it once a compartment."""
    lay = layout(labels)
    return lay, _edge_in_order(lay.edge, lay.order)


def intensity_levels(plane: np.ndarray, **_ignored) -> tuple[np.ndarray, np.ndarray, bool]:
    """A channel's grey levels for :func:`intensity`: ``(codes, lut, ok)``, see
    :func:`_level_codes`. The orchestrator computes it once a channel for every compartment."""
    plane = np.asarray(plane)
    if not np.issubdtype(plane.dtype, np.floating):
        plane = plane.astype(np.float64)
    return _level_codes(np.ascontiguousarray(plane), LEVELS)


def intensity(
    labels: np.ndarray,
    pixels: np.ndarray,
    *,
    legacy: bool = False,
    geometry: tuple | None = None,
    levels: tuple | None = None,
) -> dict[str, np.ndarray]:
    """Intensity features of one ``(H, W)`` channel for the objects of ``labels``.

    ``legacy=True`` uses CellProfiler's original quantile positions (``n * q``) instead of
    cp_measure's default ``numpy.percentile`` convention. ``geometry``
    (:func:`intensity_geometry` of these labels) and ``levels`` (:func:`intensity_levels` of
    these pixels) where the caller already has them.
    """
    lay, edge_seg = intensity_geometry(labels) if geometry is None else geometry
    if geometry is not None and (np.shape(labels) != lay.labels.shape or lay.n != n_objects(np.asarray(labels))):
        raise ValueError("geometry was computed for other labels; compute it with intensity_geometry(labels)")
    pixels = np.asarray(pixels)
    if pixels.shape != lay.labels.shape:
        raise ValueError(f"pixels have shape {pixels.shape} but labels {lay.labels.shape}; they must match")
    if lay.n == 0:
        return {key: np.zeros(0, np.float64) for key in KEYS}
    codes, lut, ok = intensity_levels(pixels) if levels is None else levels
    if codes.size != pixels.size:
        raise ValueError(f"levels were computed for another image ({codes.size} pixels, not {pixels.size}); use intensity_levels(pixels)")
    if ok:
        table = _levels_kernel(codes, lut, edge_seg, lay.order, lay.offsets, lay.rows, lay.cols, legacy)
    else:
        if not np.issubdtype(pixels.dtype, np.floating):
            pixels = pixels.astype(np.float64)
        pixels = np.ascontiguousarray(pixels)
        table = _values_kernel(pixels, lay.edge, lay.order, lay.offsets, lay.rows, lay.cols, legacy)
    return {key: table[:, i] for i, key in enumerate(KEYS)}


def _reference_intensity(labels: np.ndarray, pixels: np.ndarray, *, legacy: bool = False) -> dict[str, np.ndarray]:
    """Plain numpy/scikit-image reference, one object at a time (for the tests)."""
    from skimage.segmentation import find_boundaries

    n = n_objects(labels)
    out = {key: np.full(n, np.nan) for key in KEYS}
    if legacy:
        raise NotImplementedError("the reference covers legacy=False (numpy.percentile) only")
    edge = find_boundaries(labels, mode="inner")
    for k in range(n):
        mask = (labels == k + 1) & np.isfinite(pixels)
        if not mask.any():
            continue
        v = pixels[mask].astype(np.float64)
        rows, cols = np.nonzero(mask)
        med = np.median(v)
        row = {
            "IntegratedIntensity": v.sum(),
            "MeanIntensity": v.mean(),
            "StdIntensity": v.std(),
            "MinIntensity": v.min(),
            "MaxIntensity": v.max(),
        }
        row["LowerQuartileIntensity"], row["MedianIntensity"], row["UpperQuartileIntensity"] = np.percentile(
            v, [25, 50, 75]
        )
        row["MADIntensity"] = np.median(np.abs(v - med))
        cmi = (np.sum(rows * v) / v.sum(), np.sum(cols * v) / v.sum()) if v.sum() != 0 else (np.nan, np.nan)
        row["MassDisplacement"] = np.hypot(cmi[0] - rows.mean(), cmi[1] - cols.mean())
        imax = np.argmax(v)
        for name, value in row.items():
            out[f"Intensity_{name}_{{image}}"][k] = value
        out["Location_CenterMassIntensity_X_{image}"][k] = cmi[1]
        out["Location_CenterMassIntensity_Y_{image}"][k] = cmi[0]
        out["Location_MaxIntensity_X_{image}"][k] = cols[imax]
        out["Location_MaxIntensity_Y_{image}"][k] = rows[imax]
        ev = pixels[mask & edge].astype(np.float64)
        stats = (ev.sum(), ev.mean(), ev.std(), ev.min(), ev.max()) if ev.size else (0.0,) * 5
        for name, value in zip(("Integrated", "Mean", "Std", "Min", "Max"), stats):
            out[f"Intensity_{name}IntensityEdge_{{image}}"][k] = value
    return out
