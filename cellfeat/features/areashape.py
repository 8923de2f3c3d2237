"""MeasureObjectSizeShape: area, perimeter, hull, moments, radii, Feret and Zernike shape features.

CellProfiler's ``AreaShape_*`` names; definitions as cp_measure's ``get_sizeshape``
(``calculate_advanced=True, new_features=True``), ``get_zernike`` (degree 9) and ``get_feret``,
which in turn follow ``skimage.measure.regionprops`` and ``centrosome``:

* perimeter: regionprops' 4-neighbourhood weighted border count; PerimeterCrofton: 4 directions;
* ConvexArea: pixels whose centre lies in the hull of the pixels' edge midpoints (skimage's
  ``convex_hull_image``), counted exactly in integer arithmetic;
* EulerNumber: 8-connectivity; FilledArea: holes filled with an 8-connected structure;
* Maximum/Mean/MedianRadius: exact Euclidean distance of each pixel to the nearest pixel
  outside the object (the object alone, padded), as ``scipy.ndimage.distance_transform_edt``;
* moments: order-3 spatial (in the bounding-box frame), central, normalized, Hu, inertia tensor;
  axis lengths, eccentricity and orientation (degrees) from the inertia eigenvalues;
* Min/MaxFeretDiameter: calipers on the convex hull of the pixel centres;
* Zernike_n_m: |sum over pixels of V_nm| / (pi r^2) inside centrosome's minimum enclosing
  circle, whose convex hull and Chrystal iteration are reproduced step by step so that pixels
  lying exactly on the circle are kept or dropped as centrosome does; the sums go through 30
  complex moments per object (see :func:`_zernike_kernel`).

Layout: one pass flattens the labels (:func:`cellfeat.features.primitives.layout`); each object
is then measured on its own slice of pixels and a zero-padded bounding-box crop.

Where we differ from cp_measure: a label with no pixels gives NaN; FormFactor of an object
with zero perimeter (a single pixel) is NaN, not inf. Where 4+ hull pixels of an object lie on
its enclosing circle, centrosome picks among tied vertices with an unstable argsort over all
objects of the image, so its radius (last bit), and with it whether those pixels count, depends
on the other objects; we give centrosome's result for the object on its own.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from cellfeat.features.primitives import coord_bboxes, layout, n_objects

ZERNIKE_DEGREE = 9


def zernike_indexes(degree: int = ZERNIKE_DEGREE) -> np.ndarray:
    """(n, m) pairs with 0 <= m <= n <= degree and n - m even, centrosome's order."""
    return np.array([(n, m) for n in range(degree + 1) for m in range(n % 2, n + 1, 2)], np.int64)


def _zernike_lut(indexes: np.ndarray) -> np.ndarray:
    """Radial-polynomial coefficients, as ``centrosome.zernike.construct_zernike_lookuptable``."""
    n_max = int(indexes[:, 0].max())
    fact = np.ones(n_max + 1)
    fact[1:] = np.cumprod(np.arange(1, n_max + 1, dtype=float))
    lut = np.zeros((len(indexes), n_max // 2 + 1))
    for i, (n, m) in enumerate(indexes):
        alt = 1
        for k in range((n - m) // 2 + 1):
            lut[i, k] = alt * fact[n - k] / (fact[k] * fact[(n + m) // 2 - k] * fact[(n - m) // 2 - k])
            alt = -alt
    return lut


_BASE = (
    "Area",
    "BoundingBoxArea",
    "ConvexArea",
    "EquivalentDiameter",
    "Perimeter",
    "MajorAxisLength",
    "MinorAxisLength",
    "Eccentricity",
    "Orientation",
    "Center_X",
    "Center_Y",
    "BoundingBoxMinimum_X",
    "BoundingBoxMaximum_X",
    "BoundingBoxMinimum_Y",
    "BoundingBoxMaximum_Y",
    "FormFactor",
    "Extent",
    "Solidity",
    "Compactness",
    "EulerNumber",
    "MaximumRadius",
    "MeanRadius",
    "MedianRadius",
    "FilledArea",
)
_MOMENTS = (
    tuple(f"SpatialMoment_{p}_{q}" for p in range(3) for q in range(4))
    + tuple(f"CentralMoment_{p}_{q}" for p in range(3) for q in range(4))
    + tuple(f"NormalizedMoment_{p}_{q}" for p in range(4) for q in range(4))
    + tuple(f"HuMoment_{k}" for k in range(7))
    + (
        "InertiaTensor_0_0",
        "InertiaTensor_0_1",
        "InertiaTensor_1_0",
        "InertiaTensor_1_1",
        "InertiaTensorEigenvalues_0",
        "InertiaTensorEigenvalues_1",
    )
)
_TAIL = ("PerimeterCrofton", "MinFeretDiameter", "MaxFeretDiameter")
_ZERNIKE = tuple(f"Zernike_{n}_{m}" for n, m in zernike_indexes())
NAMES = _BASE + _MOMENTS + _TAIL + _ZERNIKE
KEYS = tuple(f"AreaShape_{name}" for name in NAMES)
_COL = {name: i for i, name in enumerate(NAMES)}
_N_GEOM = len(_BASE) + len(_MOMENTS) + len(_TAIL)

_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + math.sqrt(2)) / 2
_S2 = math.sqrt(2)
_CROFTON4 = np.array(
    [0, np.pi / 4 * (1 + 1 / _S2), np.pi / (4 * _S2), np.pi / (2 * _S2), 0, np.pi / 4 * (1 + 1 / _S2), 0,
     np.pi / (4 * _S2), np.pi / 4, np.pi / 2, np.pi / (4 * _S2), np.pi / (4 * _S2), np.pi / 4, np.pi / 2, 0, 0]
)  # fmt: skip
_EULER8 = np.array([0, 0, 0, 0, 0, 0, -1, 0, 1, 0, 0, 0, 0, 0, -1, 0], np.float64)


# --------------------------------------------------------------------------- crop kernels


@njit(cache=True)
def _perimeter(m, weights):
    """regionprops' perimeter of a zero-padded binary crop (4-neighbourhood border pixels)."""
    H, W = m.shape
    border = np.zeros((H, W), np.uint8)
    for r in range(1, H - 1):
        for c in range(1, W - 1):
            if m[r, c] and not (m[r - 1, c] and m[r + 1, c] and m[r, c - 1] and m[r, c + 1]):
                border[r, c] = 1
    total = 0.0
    for r in range(1, H - 1):
        for c in range(1, W - 1):
            if border[r, c]:
                code = 1 + 2 * (border[r - 1, c] + border[r + 1, c] + border[r, c - 1] + border[r, c + 1])
                code += 10 * (border[r - 1, c - 1] + border[r - 1, c + 1] + border[r + 1, c - 1] + border[r + 1, c + 1])
                total += weights[code]
    return total


@njit(cache=True)
def _quads(m, crofton, euler):
    """Crofton perimeter (4 directions) and Euler number (8-connected) from 2x2 configurations.

    ``m`` is zero-padded; the code of a window is 8*TL + 2*TR + 4*BL + 1*BR, as skimage's
    convolution with ``[[0,0,0],[0,1,4],[0,2,8]]`` gives.
    """
    H, W = m.shape
    cro = 0.0
    eul = 0.0
    for r in range(H - 1):
        for c in range(W - 1):
            code = 8 * m[r, c] + 2 * m[r, c + 1] + 4 * m[r + 1, c] + m[r + 1, c + 1]
            cro += crofton[code]
            eul += euler[code]
    return cro, eul


@njit(cache=True)
def _filled_area(m, rlo, rhi, n_pixels):
    """Pixels of the crop's object after filling holes (skimage ``area_filled``: background not
    8-connected to the outside). Background left or right of a row's object pixels is outside;
    only the gaps between are flooded, and an object without gaps is returned at once."""
    span = 0
    for r in range(rlo.size):
        if rlo[r] >= 0:
            span += rhi[r] - rlo[r] + 1
    if span == n_pixels:
        return n_pixels
    H, W = m.shape
    state = np.full((H, W), 2, np.uint8)  # 2 outside, 1 gap (undecided), 0 object
    area = 0
    gaps = 0
    for r in range(H):
        lo = rlo[r]
        hi = rhi[r]
        if lo < 0:
            continue
        for c in range(lo, hi + 1):
            if m[r, c]:
                state[r, c] = 0
                area += 1
            else:
                state[r, c] = 1
                gaps += 1
    if gaps == 0:
        return area
    stack = np.empty(gaps, np.int64)
    top = 0
    for r in range(1, H - 1):
        for c in range(1, W - 1):
            if state[r, c] != 1:
                continue
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if state[r + dr, c + dc] == 2 and state[r, c] == 1:
                        state[r, c] = 3  # reached, not yet expanded
                        stack[top] = r * W + c
                        top += 1
    while top > 0:
        top -= 1
        p = stack[top]
        r = p // W
        c = p % W
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if state[r + dr, c + dc] == 1:
                    state[r + dr, c + dc] = 3
                    stack[top] = (r + dr) * W + c + dc
                    top += 1
    holes = 0
    for r in range(H):
        for c in range(W):
            if state[r, c] == 1:
                holes += 1
    return area + holes


@njit(cache=True, error_model="numpy")
def _radii(m, rlo, rhi, buf):
    """(max, mean, median) Euclidean distance of object pixels to the background of a padded crop.

    Exact integer squared distances: vertical distances by two row sweeps, then Meijster's
    lower-envelope pass along each row; the same values as ``distance_transform_edt``.
    """
    H, W = m.shape
    inf = H + W
    g = np.empty((H, W), np.int64)
    for c in range(W):
        g[0, c] = inf if m[0, c] else 0
    for r in range(1, H):
        for c in range(W):
            g[r, c] = g[r - 1, c] + 1 if m[r, c] else 0
    for r in range(H - 2, -1, -1):
        for c in range(W):
            if g[r + 1, c] + 1 < g[r, c]:
                g[r, c] = g[r + 1, c] + 1
    s = np.empty(W, np.int64)
    t = np.empty(W, np.int64)
    f = np.empty(W, np.int64)
    cnt = 0
    total = 0.0
    mx = 0
    for r in range(1, H - 1):
        if rlo[r] < 0:
            continue
        # columns outside [lo - 1, hi + 1] are background (f = 0) and farther than lo - 1 or
        # hi + 1, so the lower envelope over that window gives the same distances
        a = rlo[r] - 1
        b = rhi[r] + 1
        for c in range(a, b + 1):
            f[c] = g[r, c] * g[r, c]
        q = 0
        s[0] = a
        t[0] = a
        for u in range(a + 1, b + 1):
            while q >= 0 and (t[q] - s[q]) * (t[q] - s[q]) + f[s[q]] > (t[q] - u) * (t[q] - u) + f[u]:
                q -= 1
            if q < 0:
                q = 0
                s[0] = u
                t[0] = a
            else:
                # exact: |numerator| < 2**40, so the float quotient never crosses an integer
                w = 1 + int(math.floor((u * u - s[q] * s[q] + f[u] - f[s[q]]) / (2.0 * (u - s[q]))))
                if w <= b:
                    q += 1
                    s[q] = u
                    t[q] = w
        for u in range(b, a - 1, -1):
            if m[r, u]:
                du = u - s[q]
                d2 = du * du + f[s[q]]
                buf[cnt] = d2
                cnt += 1
                total += math.sqrt(d2)
                if d2 > mx:
                    mx = d2
            if u == t[q]:
                q -= 1
    # median of sqrt(d2): the middle squared distances by counting, then sqrt
    hist = np.zeros(mx + 1, np.int64)
    for i in range(cnt):
        hist[buf[i]] += 1
    lo_rank = (cnt - 1) // 2
    hi_rank = cnt // 2
    seen = 0
    lo_v = -1
    hi_v = -1
    for v in range(mx + 1):
        seen += hist[v]
        if lo_v < 0 and seen > lo_rank:
            lo_v = v
        if seen > hi_rank:
            hi_v = v
            break
    med = (math.sqrt(lo_v) + math.sqrt(hi_v)) / 2.0 if lo_v != hi_v else math.sqrt(lo_v)
    return math.sqrt(mx), total / cnt, med


@njit(cache=True)
def _cross(o0, o1, a0, a1, b0, b1):
    return (a0 - o0) * (b1 - o1) - (a1 - o1) * (b0 - o0)


@njit(cache=True)
def _monotone_hull(px, py, n, hx, hy):
    """Strict convex hull (Andrew's monotone chain) of integer points sorted by (x, y).

    Writes the vertices (counter-clockwise) to ``hx, hy`` and returns their number (1 for a
    single point, 2 for collinear points). Callers with points sorted by (y, x) pass the
    coordinates swapped; the hull is the same, traversed the other way.
    """
    k = 0
    for i in range(n):
        while k >= 2 and _cross(hx[k - 2], hy[k - 2], hx[k - 1], hy[k - 1], px[i], py[i]) <= 0:
            k -= 1
        hx[k] = px[i]
        hy[k] = py[i]
        k += 1
    lower = k + 1
    for i in range(n - 2, -1, -1):
        while k >= lower and _cross(hx[k - 2], hy[k - 2], hx[k - 1], hy[k - 1], px[i], py[i]) <= 0:
            k -= 1
        hx[k] = px[i]
        hy[k] = py[i]
        k += 1
    if n == 1:
        return 1
    k -= 1
    if k == 2 and hx[0] == hx[1] and hy[0] == hy[1]:
        return 1
    return k


@njit(cache=True)
def _convex_area(rlo, rhi):
    """skimage's ``convex_hull_image(image).sum()``, in exact integer arithmetic.

    ``rlo[r], rhi[r]``: first and last column of the object in row ``r`` of a crop with one
    empty row above and below (-1 where a row is empty). Hull of the pixels' edge midpoints
    (doubled coordinates are integers), then the pixel centres inside or on it, row by row.
    """
    H = rlo.size
    # extreme doubled x per doubled y: only those can be hull vertices
    xlo = np.full(2 * H + 1, 1 << 40, np.int64)
    xhi = np.full(2 * H + 1, -(1 << 40), np.int64)
    for r in range(H):
        lo = rlo[r]
        hi = rhi[r]
        if lo < 0:
            continue
        for Y, a, b in ((2 * r - 1, 2 * lo, 2 * hi), (2 * r, 2 * lo - 1, 2 * hi + 1), (2 * r + 1, 2 * lo, 2 * hi)):
            xlo[Y] = min(xlo[Y], a)
            xhi[Y] = max(xhi[Y], b)
    px = np.empty(4 * H + 2, np.int64)
    py = np.empty(4 * H + 2, np.int64)
    n = 0
    for Y in range(2 * H + 1):
        if xhi[Y] < xlo[Y]:
            continue
        px[n] = xlo[Y]
        py[n] = Y
        n += 1
        if xhi[Y] != xlo[Y]:
            px[n] = xhi[Y]
            py[n] = Y
            n += 1
    # points are sorted by (y, x): run the monotone chain with y as the leading coordinate
    hx = np.empty(n + 1, np.int64)
    hy = np.empty(n + 1, np.int64)
    h = _monotone_hull(py, px, n, hy, hx)
    count = 0
    for r in range(H):
        Y = 2 * r
        lo = 1 << 62
        hi = -(1 << 62)
        for i in range(h):
            x1 = hx[i]
            y1 = hy[i]
            x2 = hx[(i + 1) % h]
            y2 = hy[(i + 1) % h]
            if (Y < y1 and Y < y2) or (Y > y1 and Y > y2):
                continue
            if y1 == y2:
                for xx in (x1, x2):
                    a = -((-xx) // 2)
                    b = xx // 2
                    lo = min(lo, a)
                    hi = max(hi, b)
                continue
            num = x1 * (y2 - y1) + (x2 - x1) * (Y - y1)
            den = y2 - y1
            if den < 0:
                num = -num
                den = -den
            a = -((-num) // (2 * den))  # ceil(num / (2 den))
            b = num // (2 * den)  # floor
            lo = min(lo, a)
            hi = max(hi, b)
        if hi >= lo:
            count += hi - lo + 1
    return count


@njit(cache=True, error_model="numpy")
def _feret(rlo, rhi):
    """(min, max) Feret diameter from the convex hull of the pixel centres (row extents as
    :func:`_convex_area`)."""
    H = rlo.size
    px = np.empty(2 * H, np.int64)
    py = np.empty(2 * H, np.int64)
    n = 0
    for r in range(H):
        lo = rlo[r]
        hi = rhi[r]
        if lo < 0:
            continue
        px[n] = lo
        py[n] = r
        n += 1
        if hi != lo:
            px[n] = hi
            py[n] = r
            n += 1
    # row by row, lo before hi: sorted by (y, x), so y leads the monotone chain
    hx = np.empty(n + 1, np.int64)
    hy = np.empty(n + 1, np.int64)
    h = _monotone_hull(py, px, n, hy, hx)
    dmax = 0
    for i in range(h):
        for j in range(i + 1, h):
            dd = (hx[i] - hx[j]) ** 2 + (hy[i] - hy[j]) ** 2
            if dd > dmax:
                dmax = dd
    if h < 3:
        return 0.0, math.sqrt(dmax)
    dmin = np.inf
    for i in range(h):
        x0 = hx[i]
        y0 = hy[i]
        x1 = hx[(i + 1) % h]
        y1 = hy[(i + 1) % h]
        far = 0.0
        for j in range(h):
            cr = float((x0 - x1) * (y0 - hy[j]) - (x0 - hx[j]) * (y0 - y1))
            d2 = cr * cr / float((x1 - x0) ** 2 + (y1 - y0) ** 2)
            if d2 > far:
                far = d2
        if far < dmin:
            dmin = far
    return math.sqrt(dmin), math.sqrt(dmax)


# --------------------------------------------------------------------------- centrosome's circle


@njit(cache=True)
def _centrosome_hull(lower, upper, j0, j1, budget, hi_, hj_):
    """centrosome ``_convex_hull.convex_hull_ijv`` for one label, from its column envelopes.

    ``lower[j]``/``upper[j]`` are the min/max row of the label's outline pixels in column ``j``
    (``-1`` where the column is empty); ``budget`` reproduces the C code's in-place buffer guard.
    Writes ``(i, j)`` vertices in centrosome's order and returns their number.
    """
    num = 0
    need_last = lower[j0] != upper[j0]
    for j in range(j0, j1 + 1):
        if lower[j] >= 0:
            while num >= 2 and not _convex_turn(hi_[num - 2], hj_[num - 2], hi_[num - 1], hj_[num - 1], lower[j], j):
                num -= 1
            hi_[num] = lower[j]
            hj_[num] = j
            num += 1
    for j in range(j1, j0, -1):
        if upper[j] >= 0:
            while num >= 2 and not _convex_turn(hi_[num - 2], hj_[num - 2], hi_[num - 1], hj_[num - 1], upper[j], j):
                num -= 1
            if budget > num:
                hi_[num] = upper[j]
                hj_[num] = j
                num += 1
    while num >= 2 and not _convex_turn(hi_[num - 2], hj_[num - 2], hi_[num - 1], hj_[num - 1], upper[j0], j0):
        num -= 1
    if need_last:
        hi_[num] = upper[j0]
        hj_[num] = j0
        num += 1
    return num


@njit(cache=True)
def _convex_turn(ai, aj, bi, bj, ci, cj):
    cross = (bj - aj) * (ci - bi) - (cj - bj) * (bi - ai)
    if cross > 0:
        return True
    if cross < 0:
        return False
    return bj > aj and bj > cj


@njit(cache=True, error_model="numpy")
def _centrosome_circle(hi_, hj_, n):
    """centrosome ``minimum_enclosing_circle`` (Chrystal's iteration) for one hull, same arithmetic."""
    if n == 0:
        return np.nan, np.nan, 0.0
    if n == 1:
        return float(hi_[0]), float(hj_[0]), 0.0
    if n == 2:
        ci = (hi_[0] + hi_[1]) / 2
        cj = (hj_[0] + hj_[1]) / 2
        di = ci - hi_[0]
        dj = cj - hj_[0]
        return ci, cj, math.sqrt(di**2 + dj**2)
    within = np.arange(n)
    s0 = 0
    s1 = 1
    ang1 = np.empty(n)
    ang0 = np.empty(n)
    angv = np.empty(n)
    while True:
        s01i = float(hi_[s0] - hi_[s1])
        s01j = float(hj_[s0] - hj_[s1])
        ss = s01i**2 + s01j**2
        best = -1
        for t in range(n):
            if within[t] < 2:
                continue
            vs0i = float(hi_[t] - hi_[s0])
            vs0j = float(hj_[t] - hj_[s0])
            vs1i = float(hi_[t] - hi_[s1])
            vs1j = float(hj_[t] - hj_[s1])
            dot1 = (s01i * vs1i + s01j * vs1j) / math.sqrt(ss * (vs1i**2 + vs1j**2))
            a1 = abs(math.acos(dot1))
            dot0 = (-s01i * vs0i + -s01j * vs0j) / math.sqrt(ss * (vs0i**2 + vs0j**2))
            a0 = abs(math.acos(dot0))
            av = np.pi - a1 - a0
            ang1[t] = a1
            ang0[t] = a0
            angv[t] = av
            if best < 0 or av < angv[best]:
                best = t
        if best < 0 or angv[best] >= np.pi / 2:
            a_i = float(hi_[s0])
            a_j = float(hj_[s0])
            b_i = float(hi_[s1])
            b_j = float(hj_[s1])
            return (a_i + b_i) / 2, (a_j + b_j) / 2, math.sqrt((a_i - b_i) ** 2 + (a_j - b_j) ** 2) / 2
        if ang1[best] <= np.pi / 2 and ang0[best] <= np.pi / 2 and angv[best] <= np.pi / 2:
            y0 = float(hi_[s0])
            x0 = float(hj_[s0])
            y1 = float(hi_[s1])
            x1 = float(hj_[s1])
            yv = float(hi_[best])
            xv = float(hj_[best])
            q0 = y0**2 + x0**2
            q1 = y1**2 + x1**2
            qv = yv**2 + xv**2
            D = 2 * (x0 * (y1 - yv) + x1 * (yv - y0) + xv * (y0 - y1))
            cx = (q0 * (y1 - yv) + q1 * (yv - y0) + qv * (y0 - y1)) / D
            cy = (q0 * (xv - x1) + q1 * (x0 - xv) + qv * (x1 - x0)) / D
            di = y0 - cy
            dj = x0 - cx
            return cy, cx, math.sqrt(di**2 + dj**2)
        if ang0[best] > np.pi / 2:
            within[s0] = within[best]
            s0 = best
            within[best] = 0
        else:
            within[s1] = within[best]
            s1 = best
            within[best] = 1


@njit(cache=True)
def _enclosing_circles(outline, offsets, rows, cols, cmin, cmax):
    """centrosome's minimum enclosing circle of every label: ``(centre_i, centre_j, radius)``.

    The hull input is the labels' outline pixels, as ``centrosome.cpmorphology.convex_hull``.
    """
    n = offsets.size - 1
    width = outline.shape[1]
    ci = np.full(n, np.nan)
    cj = np.full(n, np.nan)
    rad = np.zeros(n)
    outidx = 0
    pixidx = 0
    lower = np.empty(width, np.int64)
    upper = np.empty(width, np.int64)
    for k in range(n):
        s, e = offsets[k], offsets[k + 1]
        if s == e:
            continue
        j0 = cmin[k]
        j1 = cmax[k]
        for j in range(j0, j1 + 1):
            lower[j] = -1
            upper[j] = -1
        count = 0
        for i in range(s, e):
            r = rows[i]
            c = cols[i]
            if outline[r, c] == 0:
                continue
            count += 1
            if lower[c] < 0 or r < lower[c]:
                lower[c] = r
            if r > upper[c]:
                upper[c] = r
        pixidx += count
        hi_ = np.empty(count + 2, np.int64)
        hj_ = np.empty(count + 2, np.int64)
        # the first outline column: centrosome starts at the smallest column holding a pixel
        while lower[j0] < 0:
            j0 += 1
        while lower[j1] < 0:
            j1 -= 1
        h = _centrosome_hull(lower, upper, j0, j1, pixidx - outidx, hi_, hj_)
        outidx += h
        ci[k], cj[k], rad[k] = _centrosome_circle(hi_, hj_, h)
    return ci, cj, rad


@njit(cache=True, error_model="numpy")
def _unit_disk(rows, cols, s, e, ci, cj, rad, ym, xm, r2):
    """Pixels ``s:e`` in the unit disk of their circle, as cp_measure computes them (same
    operations, so the same pixels fall inside): compacted into ``ym, xm, r2``; returns how many."""
    n = 0
    for i in range(s, e):
        y = (rows[i] - ci) / rad
        x = (cols[i] - cj) / rad
        q = x * x + y * y
        if q > 1:
            continue
        ym[n] = y
        xm[n] = x
        r2[n] = q
        n += 1
    return n


@njit(cache=True, fastmath={"reassoc", "nsz"})
def _complex_moments(ym, xm, r2, n, top, gre, gim, zr, zi, pr, pi):
    """``G[m, j] = sum (r^2)^j z^m`` over the first ``n`` disk pixels, ``z = ym + i xm``.

    Sums may be reassociated (vectorised): they change by round-off only.
    """
    for i in range(n):
        pr[i] = 1.0
    for j in range(top[0] + 1):
        acc = 0.0
        for i in range(n):
            acc += pr[i]
            pr[i] *= r2[i]
        gre[0, j] = acc
    for i in range(n):
        zr[i] = ym[i]
        zi[i] = xm[i]
    for q in range(1, top.size):
        for i in range(n):
            pr[i] = zr[i]
            pi[i] = zi[i]
        for j in range(top[q] + 1):
            a = 0.0
            b = 0.0
            for i in range(n):
                a += pr[i]
                b += pi[i]
                pr[i] *= r2[i]
                pi[i] *= r2[i]
            gre[q, j] = a
            gim[q, j] = b
        for i in range(n):  # z^(q+1) = z^q * z, as cp_measure's repeated product
            t = zr[i] * ym[i] - zi[i] * xm[i]
            zi[i] = zr[i] * xm[i] + zi[i] * ym[i]
            zr[i] = t


@njit(cache=True, error_model="numpy")
def _zernike_kernel(offsets, rows, cols, ci, cj, rad, nm, lut):
    """|Zernike moments| / (pi r^2) of every label, as cp_measure's ``get_zernike``.

    cp_measure sums ``s_nm(r^2) z^m`` over pixels (``z = y + i x`` in the unit circle, ``s_nm``
    the radial polynomial over ``r^m``). The sum is linear in the pixel terms, so each label
    gets the complex moments ``G[m, j] = sum (r^2)^j z^m`` once (:func:`_complex_moments`) and
    combines them with the polynomial coefficients: 30 sums instead of 30 polynomials per pixel.
    """
    n = offsets.size - 1
    K = nm.shape[0]
    out = np.full((n, K), np.nan)
    mmax = 0
    jmax = 0
    for t in range(K):
        mmax = max(mmax, nm[t, 1])
        jmax = max(jmax, (nm[t, 0] - nm[t, 1]) // 2)
    top = np.zeros(mmax + 1, np.int64)  # highest power of r^2 needed with z^m
    for t in range(K):
        top[nm[t, 1]] = max(top[nm[t, 1]], (nm[t, 0] - nm[t, 1]) // 2)
    gre = np.zeros((mmax + 1, jmax + 1))
    gim = np.zeros((mmax + 1, jmax + 1))
    biggest = 0
    for k in range(n):
        biggest = max(biggest, offsets[k + 1] - offsets[k])
    ym = np.empty(biggest)
    xm = np.empty(biggest)
    r2 = np.empty(biggest)
    zr = np.empty(biggest)
    zi = np.empty(biggest)
    pr = np.empty(biggest)
    pi = np.empty(biggest)
    for k in range(n):
        s, e = offsets[k], offsets[k + 1]
        if s == e or rad[k] == 0:
            continue  # no pixels, or one pixel: centrosome's 0/0 gives NaN
        m = _unit_disk(rows, cols, s, e, ci[k], cj[k], rad[k], ym, xm, r2)
        gre[:] = 0.0
        gim[:] = 0.0
        _complex_moments(ym, xm, r2, m, top, gre, gim, zr, zi, pr, pi)
        area = np.pi * rad[k] * rad[k]
        for t in range(K):
            zm = nm[t, 1]
            J = (nm[t, 0] - zm) // 2
            re = 0.0
            im = 0.0
            for c in range(J + 1):
                re += lut[t, c] * gre[zm, J - c]
                im += lut[t, c] * gim[zm, J - c]
            out[k, t] = math.sqrt(re * re + im * im) / area
    return out


# --------------------------------------------------------------------------- the family


@njit(cache=True)
def _moments(rows, cols, s, e, r0, c0, dr, dc):
    """Moments ``sum ((r - r0) - dr)^p ((c - c0) - dc)^q``, p, q <= 3, of the pixels ``s:e``:
    box frame ``(r0, c0)``, then the (small) centroid shift, as cp_measure subtracts them."""
    m00 = m01 = m02 = m03 = 0.0
    m10 = m11 = m12 = m13 = 0.0
    m20 = m21 = m22 = m23 = 0.0
    m30 = m31 = m32 = m33 = 0.0
    for i in range(s, e):
        r = (rows[i] - r0) - dr
        c = (cols[i] - c0) - dc
        r2 = r * r
        r3 = r2 * r
        c2 = c * c
        c3 = c2 * c
        m00 += 1.0
        m01 += c
        m02 += c2
        m03 += c3
        m10 += r
        m11 += r * c
        m12 += r * c2
        m13 += r * c3
        m20 += r2
        m21 += r2 * c
        m22 += r2 * c2
        m23 += r2 * c3
        m30 += r3
        m31 += r3 * c
        m32 += r3 * c2
        m33 += r3 * c3
    M = np.empty((4, 4))
    M[0, 0], M[0, 1], M[0, 2], M[0, 3] = m00, m01, m02, m03
    M[1, 0], M[1, 1], M[1, 2], M[1, 3] = m10, m11, m12, m13
    M[2, 0], M[2, 1], M[2, 2], M[2, 3] = m20, m21, m22, m23
    M[3, 0], M[3, 1], M[3, 2], M[3, 3] = m30, m31, m32, m33
    return M


@njit(cache=True, error_model="numpy")
def _shape_kernel(offsets, rows, cols, rmin, rmax, cmin, cmax, pweights, crofton, euler):
    """All non-Zernike features, one label (and its padded crop) at a time."""
    n = offsets.size - 1
    out = np.full((n, 80), np.nan)  # len(_BASE) + len(_MOMENTS) + len(_TAIL)
    maxlen = 1
    for k in range(n):
        maxlen = max(maxlen, offsets[k + 1] - offsets[k])
    buf = np.empty(maxlen, np.int64)
    for k in range(n):
        s, e = offsets[k], offsets[k + 1]
        if s == e:
            continue
        r0 = rmin[k]
        c0 = cmin[k]
        h = rmax[k] - r0 + 1
        w = cmax[k] - c0 + 1
        area = float(e - s)
        # raw moments in the bounding-box frame, then centred moments by direct summation
        M = _moments(rows, cols, s, e, float(r0), float(c0), 0.0, 0.0)
        cr = M[1, 0] / M[0, 0]
        cc = M[0, 1] / M[0, 0]
        mu = _moments(rows, cols, s, e, float(r0), float(c0), cr, cc)
        nu = np.full((4, 4), np.nan)
        for a in range(4):
            for b in range(4):
                if a + b >= 2:
                    nu[a, b] = mu[a, b] / mu[0, 0] ** ((a + b) / 2 + 1)
        ia = mu[2, 0] / mu[0, 0]
        ib = mu[1, 1] / mu[0, 0]
        ic = mu[0, 2] / mu[0, 0]
        half = (ia + ic) / 2
        disc = math.sqrt(((ic - ia) / 2) ** 2 + ib**2)
        eig0 = max(half + disc, 0.0)
        eig1 = max(half - disc, 0.0)
        it00, itoff, it11 = ic, -ib, ia
        if it00 - it11 == 0:
            orient = np.pi / 4 if itoff < 0 else -np.pi / 4
        else:
            orient = 0.5 * math.atan2(-2 * itoff, it11 - it00)
        ecc = 0.0 if eig0 == 0 else math.sqrt(1 - eig1 / eig0)

        m = np.zeros((h + 2, w + 2), np.uint8)
        rlo = np.full(h + 2, -1, np.int64)  # per padded row: first and last object column
        rhi = np.full(h + 2, -1, np.int64)
        for i in range(s, e):  # raster order: a row's first pixel is its leftmost
            pr = rows[i] - r0 + 1
            pc = cols[i] - c0 + 1
            m[pr, pc] = 1
            if rlo[pr] < 0:
                rlo[pr] = pc
            rhi[pr] = pc
        perim = _perimeter(m, pweights)
        cro, eul = _quads(m, crofton, euler)
        convex = float(_convex_area(rlo, rhi))
        filled = float(_filled_area(m, rlo, rhi, e - s))
        rmax_, rmean, rmed = _radii(m, rlo, rhi, buf)
        fmin, fmax = _feret(rlo, rhi)

        o = out[k]
        o[0] = area
        o[1] = float(h * w)
        o[2] = convex
        o[3] = math.sqrt(4 * area / np.pi)
        o[4] = perim
        o[5] = 4 * math.sqrt(eig0)
        o[6] = 4 * math.sqrt(eig1)
        o[7] = ecc
        o[8] = orient * (180 / np.pi)
        o[9] = c0 + cc
        o[10] = r0 + cr
        o[11] = c0
        o[12] = c0 + w
        o[13] = r0
        o[14] = r0 + h
        o[15] = 4.0 * np.pi * area / perim**2 if perim > 0 else np.nan
        o[16] = area / (h * w)
        o[17] = area / convex
        o[18] = perim**2 / max(4.0 * np.pi * area, 1.0)
        o[19] = eul
        o[20] = rmax_
        o[21] = rmean
        o[22] = rmed
        o[23] = filled
        j = 24
        for a in range(3):
            for b in range(4):
                o[j] = M[a, b]
                j += 1
        for a in range(3):
            for b in range(4):
                o[j] = mu[a, b]
                j += 1
        for a in range(4):
            for b in range(4):
                o[j] = nu[a, b]
                j += 1
        n20, n02, n11 = nu[2, 0], nu[0, 2], nu[1, 1]
        n30, n03, n21, n12 = nu[3, 0], nu[0, 3], nu[2, 1], nu[1, 2]
        ha = n30 + n12
        hb = n21 + n03
        o[j] = n20 + n02
        o[j + 1] = (n20 - n02) ** 2 + 4 * n11**2
        o[j + 2] = (n30 - 3 * n12) ** 2 + (3 * n21 - n03) ** 2
        o[j + 3] = ha**2 + hb**2
        o[j + 4] = (n30 - 3 * n12) * ha * (ha**2 - 3 * hb**2) + (3 * n21 - n03) * hb * (3 * ha**2 - hb**2)
        o[j + 5] = (n20 - n02) * (ha**2 - hb**2) + 4 * n11 * ha * hb
        o[j + 6] = (3 * n21 - n03) * ha * (ha**2 - 3 * hb**2) - (n30 - 3 * n12) * hb * (3 * ha**2 - hb**2)
        j += 7
        o[j] = it00
        o[j + 1] = itoff
        o[j + 2] = itoff
        o[j + 3] = it11
        o[j + 4] = eig0
        o[j + 5] = eig1
        j += 6
        o[j] = cro
        o[j + 1] = fmin
        o[j + 2] = fmax
    return out


def areashape(labels: np.ndarray, pixels: None = None, *, zernike: bool = True) -> dict[str, np.ndarray]:
    """AreaShape features of the objects of ``labels`` (``pixels`` is unused: shape only).

    ``zernike=False`` leaves out the 30 ``AreaShape_Zernike_*`` keys.
    """
    lay = layout(labels)
    keys = KEYS if zernike else KEYS[:_N_GEOM]
    if lay.n == 0:
        return {key: np.zeros(0, np.float64) for key in keys}
    offsets, rows, cols = lay.offsets, lay.rows, lay.cols
    rmin, rmax, cmin, cmax = coord_bboxes(offsets, rows, cols)
    geom = _shape_kernel(offsets, rows, cols, rmin, rmax, cmin, cmax, _PERIMETER_WEIGHTS, _CROFTON4, _EULER8)
    assert geom.shape[1] == _N_GEOM
    out = {key: geom[:, i] for i, key in enumerate(KEYS[:_N_GEOM])}
    if zernike:
        ci, cj, rad = _enclosing_circles(lay.outline, offsets, rows, cols, cmin, cmax)
        nm = zernike_indexes()
        with np.errstate(all="ignore"):
            z = _zernike_kernel(offsets, rows, cols, ci, cj, rad, nm, _zernike_lut(nm))
        out.update({key: z[:, i] for i, key in enumerate(KEYS[_N_GEOM:])})
    return out


def _reference_areashape(labels: np.ndarray) -> dict[str, np.ndarray]:
    """scikit-image / scipy / centrosome reference, object by object (for the tests).

    Uses ``regionprops`` for area, perimeters, hull, Euler number, filled area and moments,
    ``distance_transform_edt`` for the radii, and centrosome for the enclosing circles and
    Feret diameters; labels must be contiguous ``1..n``.
    """
    import centrosome.cpmorphology as cpm
    import scipy.ndimage as ndi
    from centrosome import zernike as cz
    from skimage.measure import regionprops

    n = n_objects(labels)
    out = {key: np.full(n, np.nan) for key in KEYS}
    for rp in regionprops(labels):
        k = rp.label - 1
        img = np.pad(rp.image, 1)
        dist = ndi.distance_transform_edt(img)[img]
        values = {
            "Area": rp.area,
            "BoundingBoxArea": rp.area_bbox,
            "ConvexArea": rp.area_convex,
            "EquivalentDiameter": rp.equivalent_diameter_area,
            "Perimeter": rp.perimeter,
            "MajorAxisLength": rp.axis_major_length,
            "MinorAxisLength": rp.axis_minor_length,
            "Eccentricity": rp.eccentricity,
            "Orientation": np.degrees(rp.orientation),
            "Center_X": rp.centroid[1],
            "Center_Y": rp.centroid[0],
            "BoundingBoxMinimum_X": rp.bbox[1],
            "BoundingBoxMaximum_X": rp.bbox[3],
            "BoundingBoxMinimum_Y": rp.bbox[0],
            "BoundingBoxMaximum_Y": rp.bbox[2],
            "FormFactor": 4 * np.pi * rp.area / rp.perimeter**2 if rp.perimeter > 0 else np.nan,
            "Extent": rp.extent,
            "Solidity": rp.solidity,
            "Compactness": rp.perimeter**2 / max(4 * np.pi * rp.area, 1),
            "EulerNumber": rp.euler_number,
            "MaximumRadius": dist.max(),
            "MeanRadius": dist.mean(),
            "MedianRadius": np.median(dist),
            "FilledArea": rp.area_filled,
            "PerimeterCrofton": rp.perimeter_crofton,
        }
        for p in range(4):
            for q in range(4):
                if p < 3:
                    values[f"SpatialMoment_{p}_{q}"] = rp.moments[p, q]
                    values[f"CentralMoment_{p}_{q}"] = rp.moments_central[p, q]
                values[f"NormalizedMoment_{p}_{q}"] = rp.moments_normalized[p, q]
        values.update({f"HuMoment_{i}": rp.moments_hu[i] for i in range(7)})
        tensor, eig = rp.inertia_tensor, rp.inertia_tensor_eigvals
        values.update({f"InertiaTensor_{a}_{b}": tensor[a, b] for a in range(2) for b in range(2)})
        values.update({f"InertiaTensorEigenvalues_{i}": eig[i] for i in range(2)})
        for name, value in values.items():
            out[f"AreaShape_{name}"][k] = value
    index = np.arange(1, n + 1)
    rows, cols = np.nonzero(labels)
    ijv = np.column_stack((rows, cols, labels[rows, cols]))
    hull, counts = cpm.convex_hull_ijv(ijv, index)
    fmin, fmax = cpm.feret_diameter(hull, counts, index)
    out["AreaShape_MinFeretDiameter"][:] = fmin
    out["AreaShape_MaxFeretDiameter"][:] = fmax
    nm = zernike_indexes()
    with np.errstate(all="ignore"):
        z = cz.zernike(nm, labels, index)
    for i, (zn, zm) in enumerate(nm):
        out[f"AreaShape_Zernike_{zn}_{zm}"][:] = np.abs(z[:, i])
    return out
