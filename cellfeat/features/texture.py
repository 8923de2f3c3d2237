"""Texture: Haralick's 13 co-occurrence features per object, as CellProfiler's MeasureTexture.

The algorithm is cp_measure's ``get_texture`` (CellProfiler 4's MeasureTexture, which calls
``mahotas.features.haralick(crop, distance=scale, ignore_zeros=True)`` per object):

1. Quantize the whole image once: ``img_as_ubyte`` (``rint(x * 255)``), then, for
   ``gray_levels != 256``, ``rescale_intensity`` from ``[0, 255]`` to ``[0, gray_levels - 1]``.
2. For each of the 4 directions ``(dy, dx) = (0, 1), (1, 1), (1, 0), (1, -1)`` times ``scale``,
   count the symmetric grey-level co-occurrence matrix (GLCM) of the pixel pairs whose two
   pixels both lie in the object and both have a non-zero level (level 0 is background).
3. Reduce each GLCM to the 13 features with mahotas' formulas (``haralick_features``,
   ``preserve_haralick_bug=False``). If any direction has no pair, the object's 52 values are
   NaN (mahotas raises; cp_measure catches it).

The labels' part is done once a compartment for every channel (:func:`texture_geometry`): the
labelled pixels grouped by object and, per direction, each pixel's neighbour as a position within
its object (or a slot held at level 0 where the neighbour lies outside the object), so counting
needs no bounds or label checks; the grey levels are quantized once a channel (:func:`quantize`,
shared between compartments). For each object and direction the kernel counts the unordered
level pairs (a <= b) in one branch-free pass over the object's pixels, into a 256 x 256 table
whose cells are listed when first counted (half the updates of counting the symmetric GLCM,
whose cells are u at (a, b) and (b, a), or 2u on the diagonal); one pass over the listed cells
then gathers every sum the features need (total, sum of c**2, of c log2 c, of i j c, the
marginals as integer counts) and resets the table, and the features come from integer moments
combined once (:func:`_features`). Cost: O(pixels + cells + levels) per object and direction,
never O(levels**2).

One deliberate difference, the same as cp_measure's own numba backend: mahotas' HXY1
(-sum p_ij log2(px_i py_j)) and HXY2 (the entropy of the outer product of the marginals) are
both exactly HX + HY = 2 HX for a symmetric GLCM, and are computed that way here (O(levels)
instead of O(cells) and O(levels**2)). InfoMeas1 agrees to ~1e-12 relative. InfoMeas2 =
sqrt(1 - exp(-2 (HXY2 - HXY))) amplifies a 1e-16 rounding residual to ~1e-8 where it is ~0,
so tests compare InfoMeas2 with ``atol=1e-7``.
"""

from __future__ import annotations

import numpy as np
import skimage.exposure
import skimage.util
from numba import njit

from cellfeat.features.primitives import as_labels, layout

F_HARALICK = (
    "AngularSecondMoment",
    "Contrast",
    "Correlation",
    "Variance",
    "InverseDifferenceMoment",
    "SumAverage",
    "SumVariance",
    "SumEntropy",
    "Entropy",
    "DifferenceVariance",
    "DifferenceEntropy",
    "InfoMeas1",
    "InfoMeas2",
)

# (dy, dx) per direction, in mahotas' (and so CellProfiler's) order: _00 horizontal,
# _01 diagonal NW-SE, _02 vertical, _03 diagonal NE-SW.
DIRECTIONS = np.array([[0, 1], [1, 1], [1, 0], [1, -1]], np.int64)


def texture(
    labels: np.ndarray,
    pixels: np.ndarray,
    *,
    scale: int = 3,
    gray_levels: int = 256,
    geometry: tuple | None = None,
    levels: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Haralick features per object: ``Texture_{Feature}_{image}_{scale}_{direction:02d}_{levels}``.

    ``labels`` is an int label image, ``pixels`` one float image in [0, 1] of the same shape.
    Element ``i`` belongs to label ``i + 1``; labels with no pixels, or with no non-zero pixel
    pair in some direction, get NaN. ``geometry``: :func:`texture_geometry` of these labels and
    ``levels``: :func:`quantize` of these pixels, where the caller already has them (the
    orchestrator computes them once a compartment and once a channel).
    """
    labels, pixels = _check(labels, pixels, scale, gray_levels)
    if levels is None:
        levels = quantize(pixels, gray_levels)
    elif levels.shape != pixels.shape or levels.dtype != np.uint8:
        raise ValueError(f"levels must be quantize(pixels, gray_levels): uint8 of shape {pixels.shape}, got {levels.dtype} {levels.shape}")
    geometry = texture_geometry(labels, scale=scale) if geometry is None else geometry
    offsets, order, neighbours, geometry_scale = geometry
    n = int(labels.max(initial=0))
    if offsets.size - 1 != n or order.size != offsets[-1] or neighbours.shape != (len(DIRECTIONS), order.size):
        raise ValueError("geometry was computed for other labels; compute it with texture_geometry(labels, scale=scale)")
    if geometry_scale != int(scale):
        raise ValueError(f"geometry was computed for scale {geometry_scale}, not {scale}; compute it with texture_geometry(labels, scale=scale)")
    values = _haralick_objects(levels, offsets, order, neighbours, gray_levels)
    return pack(values, scale, gray_levels)


def texture_geometry(labels: np.ndarray, *, scale: int = 3, **_ignored) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """What the counting needs of the labels alone, so the orchestrator computes it once a
    compartment for every channel: ``(offsets, order, neighbours, scale)``, the labelled pixels
    grouped by object (flat indices ``order``, object ``k``'s at ``offsets[k]:offsets[k + 1]``)
    and, per direction ``d`` and pixel ``i``, ``neighbours[d, i]``: the position within its
    object of the pixel ``scale`` steps away in direction ``d`` when that pixel lies in the same
    object, else the object's size (a slot the kernel holds at level 0, which never counts)."""
    lay = layout(labels)  # the compartment's, shared with the other families
    return lay.offsets, lay.order, _neighbours(lay.labels, lay.offsets, lay.rows, lay.cols, DIRECTIONS * int(scale)), int(scale)


@njit(cache=True)
def _neighbours(labels, offsets, rows, cols, deltas):
    H, W = labels.shape
    n = offsets.size - 1
    within = np.empty((H, W), np.int32)  # each labelled pixel's position within its object
    for obj in range(n):
        for i in range(offsets[obj], offsets[obj + 1]):
            within[rows[i], cols[i]] = i - offsets[obj]
    nd = deltas.shape[0]
    out = np.empty((nd, offsets[n]), np.int32)
    for obj in range(n):
        start, stop = offsets[obj], offsets[obj + 1]
        lab = obj + 1
        for i in range(start, stop):
            y, x = rows[i], cols[i]
            for d in range(nd):
                y2 = y + deltas[d, 0]
                x2 = x + deltas[d, 1]
                if 0 <= y2 < H and 0 <= x2 < W and labels[y2, x2] == lab:
                    out[d, i] = within[y2, x2]
                else:
                    out[d, i] = stop - start
    return out


def quantize(pixels: np.ndarray, gray_levels: int = 256, **_ignored) -> np.ndarray:
    """The image's grey levels as uint8, exactly as cp_measure/CellProfiler 4 quantize them."""
    q = skimage.util.img_as_ubyte(pixels, force_copy=True)
    if gray_levels != 256:
        q = skimage.exposure.rescale_intensity(
            q, in_range=(0, 255), out_range=(0, gray_levels - 1)
        ).astype(np.uint8)
    return q


def pack(values: np.ndarray, scale: int, gray_levels: int) -> dict[str, np.ndarray]:
    """``(n_objects, 4, 13)`` -> ``{"Texture_{name}_{image}_{scale}_{dd}_{levels}": column}``."""
    return {
        f"Texture_{name}_{{image}}_{scale}_{d:02d}_{gray_levels}": np.ascontiguousarray(values[:, d, f])
        for d in range(values.shape[1])
        for f, name in enumerate(F_HARALICK)
    }


def _check(labels, pixels, scale, gray_levels):
    labels = as_labels(labels)
    pixels = np.asarray(pixels)
    if labels.shape != pixels.shape:
        raise ValueError(f"texture needs labels and pixels of one shape, got {labels.shape} and {pixels.shape}")
    if int(scale) < 1:
        raise ValueError(f"scale must be at least 1 pixel, got {scale}")
    if not 2 <= int(gray_levels) <= 256:
        raise ValueError(f"gray_levels must be between 2 and 256, got {gray_levels}")
    return labels, pixels


@njit(cache=True, error_model="numpy")
def _haralick_objects(q, offsets, order, neighbours, n_levels):
    qflat = q.ravel()
    n = offsets.size - 1
    ndir = neighbours.shape[0]
    out = np.full((n, ndir, 13), np.nan)
    size = 0
    for obj in range(n):
        size = max(size, offsets[obj + 1] - offsets[obj])
    # unordered pair counts u[min(a, b) << 8 | max(a, b)]: the symmetric GLCM holds u in cells
    # (a, b) and (b, a), 2u on its diagonal; each cell is listed in ``cells`` when first counted
    u = np.zeros(256 * 256, np.int64)
    cells = np.empty(size + 1, np.int64)
    px = np.zeros(n_levels, np.int64)  # marginals, as integer counts
    pplus = np.zeros(2 * n_levels, np.int64)
    pminus = np.zeros(n_levels, np.int64)
    row = np.empty(ndir * 13)
    # counts never exceed 2 * pixels: a table of log2(c) (0 for c = 0, where c is 0 too)
    log2c = np.log2(np.arange(2 * size + 2).astype(np.float64))
    log2c[0] = 0.0
    inv_d2 = np.empty(n_levels)  # mahotas' 1 / ((i - j)**2 + 1), by |i - j|
    for k in range(n_levels):
        inv_d2[k] = 1.0 / (k * k + 1)
    vals = np.empty(size + 1, np.int64)
    for obj in range(n):
        start, stop = offsets[obj], offsets[obj + 1]
        m = stop - start
        if m == 0:
            continue
        fm1 = 1
        lo = n_levels
        for k in range(m):
            v = np.int64(qflat[order[start + k]])
            vals[k] = v
            fm1 = max(fm1, v + 1)
            if v > 0:
                lo = min(lo, v)
        vals[m] = 0  # the slot of a neighbour outside the object
        span = fm1 - lo
        complete = span > 0
        for d in range(ndir):
            if not complete:
                break
            nb = neighbours[d, start:stop]
            nc = 0
            for k in range(m):
                # Branch-free (whether the pair counts is unpredictable): a pair that does not
                # count (a level 0, or the neighbour outside the object) adds 0 and its listing
                # is overwritten.
                a = vals[k]
                b = vals[nb[k]]
                ok = np.int64((a != 0) & (b != 0))
                code = (min(a, b) << 8) | max(a, b)
                old = u[code]
                cells[nc] = code
                nc += ok & (old == 0)
                u[code] = old + ok
            if nc == 0:  # no pair (so nothing counted): the object's values stay NaN
                complete = False
                break
            # one pass over the cells counted: the sums every feature needs, the table reset
            px[lo:fm1] = 0
            pplus[2 * lo : 2 * fm1] = 0
            pminus[:span] = 0
            total = 0
            ij = 0
            s2 = 0  # sum c**2 over the GLCM's cells
            s_log = 0.0  # sum c log2(c)
            for t in range(nc):
                code = cells[t]
                c = u[code]
                u[code] = 0
                a = code >> 8
                b = code & 255
                dab = b - a
                if dab == 0:
                    px[a] += 2 * c
                    s2 += 4 * c * c
                    s_log += 2.0 * c * log2c[2 * c]
                else:  # cell (a, b) adds to column b, (b, a) to column a
                    px[a] += c
                    px[b] += c
                    s2 += 2 * c * c
                    s_log += 2.0 * c * log2c[c]
                total += 2 * c
                pplus[a + b] += 2 * c
                pminus[dab] += 2 * c
                ij += 2 * a * b * c
            s1 = s_log - total * np.log2(total)  # sum c (log2 c - log2 T), i.e. -T * Entropy
            _features(total, s1, s2, ij, lo, fm1, px, pplus, pminus, log2c, inv_d2, row, d)
        if complete:
            for d in range(ndir):
                for f in range(13):
                    out[obj, d, f] = row[d * 13 + f]
    return out


@njit(cache=True, error_model="numpy")
def _features(total, s1, s2, ij, lo, fm1, px, pplus, pminus, log2c, inv_d2, row, d):
    """mahotas' ``haralick_features`` for one GLCM, from sums gathered while counting it.

    ``total`` = T, the total count; ``s1`` = sum of c log2(c / T) and ``s2`` = sum of c**2 over
    the cells; ``ij`` = sum of i j c; the marginals ``px``, ``pplus``, ``pminus`` as integer
    counts. Every feature is mahotas' formula rewritten on these sums, equal up to rounding:
    moments are integer sums combined once, e.g. Variance = (T sum k^2 px - (sum k px)^2) / T^2
    (products taken in float64: exact while under 2**53, i.e. objects up to ~10**5 pixels, and
    never overflowing), so a one-level object's variance is exactly 0 as in mahotas; entropies
    are -sum (c / T)(log2 c - log2 T) from a table of integer logs (a count equal to T adds
    exactly 0). Levels below ``lo`` (the object's
    lowest non-zero level) have no pairs, so the loops over levels skip them.
    """
    T = float(total)
    invT = 1.0 / T
    log2T = np.log2(T)
    span = fm1 - lo
    e1 = 0  # sum k px_k, sum k^2 px_k; the entropy of px
    e2 = 0
    hx = 0.0
    for k in range(lo, fm1):
        c = px[k]
        e1 += c * k
        e2 += c * (k * k)
        hx -= (c * invT) * (log2c[c] - log2T)
    contrast = 0
    sq_minus = 0  # sum pminus_k^2
    idm = 0.0
    h_minus = 0.0
    for k in range(span):  # |i - j| < span
        c = pminus[k]
        contrast += c * (k * k)
        sq_minus += c * c
        idm += c * inv_d2[k]
        h_minus -= (c * invT) * (log2c[c] - log2T)
    a1 = 0  # sum k pplus_k, sum k^2 pplus_k
    a2 = 0
    h_plus = 0.0
    for k in range(2 * lo, 2 * fm1):
        c = pplus[k]
        a1 += c * k
        a2 += c * (k * k)
        h_plus -= (c * invT) * (log2c[c] - log2T)
    t2 = T * T
    f1 = float(e1)
    var_num = T * e2 - f1 * f1  # T^2 times px's variance
    vx = var_num / t2
    ent = -s1 * invT
    # HXY1 = -sum p_ij log2(px_i py_j) = HX + HY and HXY2 (the entropy of px py) = HX + HY for
    # any GLCM; here HY = HX (symmetric). See the module docstring for what that costs.
    hxy1 = 2.0 * hx
    hxy2 = 2.0 * hx
    base = d * 13
    row[base + 0] = s2 / t2
    row[base + 1] = contrast * invT
    row[base + 2] = 1.0 if var_num == 0 else (T * ij - f1 * f1) / var_num
    row[base + 3] = vx
    row[base + 4] = idm * invT
    row[base + 5] = a1 * invT
    row[base + 6] = (T * a2 - float(a1) * a1) / t2
    row[base + 7] = h_plus
    row[base + 8] = ent
    # mahotas: pminus.var() over all fm1 entries (those from span on are 0), mean 1 / fm1
    row[base + 9] = (float(fm1) * sq_minus - t2) / (t2 * fm1 * fm1)
    row[base + 10] = h_minus
    row[base + 11] = (ent - hxy1) if hx == 0.0 else (ent - hxy1) / hx
    row[base + 12] = np.sqrt(max(0.0, 1.0 - np.exp(-2.0 * (hxy2 - ent))))


# ---------------------------------------------------------------------------------------------
# Plain numpy reference (per-object crops, dense GLCMs, mahotas' formulas verbatim, exact HXY2)
# ---------------------------------------------------------------------------------------------


def texture_reference(
    labels: np.ndarray, pixels: np.ndarray, *, scale: int = 3, gray_levels: int = 256
) -> dict[str, np.ndarray]:
    """Slow numpy version of :func:`texture`, for tests: one dense GLCM per object and direction."""
    labels, pixels = _check(labels, pixels, scale, gray_levels)
    q = quantize(pixels, gray_levels)
    n = int(labels.max(initial=0))
    values = np.full((n, len(DIRECTIONS), 13), np.nan)
    for lab in range(1, n + 1):
        ys, xs = np.nonzero(labels == lab)
        if ys.size == 0:
            continue
        crop_lab = labels[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] == lab
        crop = np.where(crop_lab, q[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], 0).astype(np.int64)
        fm1 = int(crop.max()) + 1
        rows = []
        for dy, dx in DIRECTIONS * scale:
            h, w = crop.shape
            hh, ww = max(0, h - dy), max(0, w - abs(dx))
            a = crop[:hh, max(0, -dx) : max(0, -dx) + ww]
            b = crop[dy : dy + hh, max(0, dx) : max(0, dx) + ww]
            cm = np.zeros((fm1, fm1), np.int64)
            np.add.at(cm, (a.ravel(), b.ravel()), 1)
            cm = cm + cm.T
            cm[0] = 0
            cm[:, 0] = 0
            if cm.sum() == 0:
                rows = None
                break
            rows.append(_features_reference(cm))
        if rows is not None:
            values[lab - 1] = rows
    return pack(values, scale, gray_levels)


def _features_reference(cmat: np.ndarray) -> np.ndarray:
    """mahotas.features.texture.haralick_features for one GLCM, transcribed."""

    def entropy(p):
        p = p.ravel()
        return -np.dot(np.log2(p + (p == 0)), p)

    m = len(cmat)
    k = np.arange(m)
    i, j = np.mgrid[:m, :m]
    p = cmat / float(cmat.sum())
    px, py = p.sum(0), p.sum(1)
    ux, uy = np.dot(px, k), np.dot(py, k)
    vx, vy = np.dot(px, k**2) - ux**2, np.dot(py, k**2) - uy**2
    sx, sy = np.sqrt(vx), np.sqrt(vy)
    pplus = np.bincount((i + j).ravel(), p.ravel(), minlength=2 * m)
    pminus = np.bincount(np.abs(i - j).ravel(), p.ravel(), minlength=m)
    f = np.zeros(13)
    f[0] = np.dot(p.ravel(), p.ravel())
    f[1] = np.dot(k**2, pminus)
    f[2] = 1.0 if sx == 0 or sy == 0 else (1.0 / sx / sy) * (np.dot((i * j).ravel(), p.ravel()) - ux * uy)
    f[3] = vx
    f[4] = np.dot(1.0 / ((i - j) ** 2 + 1).ravel(), p.ravel())
    tk = np.arange(2 * m)
    f[5] = np.dot(tk, pplus)
    f[6] = np.dot(tk**2, pplus) - f[5] ** 2
    f[7] = entropy(pplus)
    f[8] = entropy(p)
    f[9] = pminus.var()
    f[10] = entropy(pminus)
    hx, hy = entropy(px), entropy(py)
    cross = np.outer(px, py)
    cross = (cross + (cross == 0)).ravel()
    hxy1 = -np.dot(p.ravel(), np.log2(cross))
    hxy2 = entropy(cross)
    f[11] = (f[8] - hxy1) / max(hx, hy) if max(hx, hy) else f[8] - hxy1
    f[12] = np.sqrt(max(0.0, 1 - np.exp(-2.0 * (hxy2 - f[8]))))
    return f
