"""RadialDistribution: how an object's intensity spreads from its centre to its edge.

The algorithm is cp_measure's ``get_radial_distribution`` (CellProfiler's
MeasureObjectIntensityDistribution, scaled bins, no Zernikes), per object:

1. ``d_to_edge``: the Euclidean distance of each pixel to the nearest pixel outside the object
   (CellProfiler's ``distance_to_edge``; pixels beyond the image border do not count as
   outside, as ``scipy.ndimage.distance_transform_edt`` does).
2. The centre is the pixel farthest from the edge, the first one in C order on ties.
3. ``d_from_center``: the geodesic distance from the centre inside the object, 8-connected,
   steps of 1 and sqrt(2) (``centrosome.propagate``'s Dijkstra on a zero image, weight 1). Pixels
   that the centre cannot reach (another piece of a split object) are left out.
4. Scaled: ``bin = int(bin_count * d_from_center / (d_from_center + d_to_edge + 0.001))``;
   unscaled: ``bin = int(bin_count * d_from_center / maximum_radius)``, capped at
   ``bin_count`` (the overflow bin).
5. ``FracAtD`` = the bin's share of the object's intensity, ``MeanFrac`` = FracAtD / (the bin's
   share of the object's pixels + eps), ``RadialCV`` = the coefficient of variation (population
   std / mean) of the mean intensities of the 8 wedges around the centre that have pixels in
   the bin (0 where none has).

The kernel handles one object at a time in its bounding box plus a 1-pixel margin: an exact
squared EDT (rows, then an outward column search that stops early), relaxation sweeps for
the geodesic distance (the same fixed point as Dijkstra, see :func:`_geodesic`), then the
per-bin sums.
CellProfiler separates touching objects by colouring them before its image-wide distance
transform and propagation; measuring each object in its own box gives the same distances
because same-coloured objects never touch (8-connected). Sums are float64 (cp_measure sums in
the image's dtype; given float64 pixels it agrees to ~1e-15).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import scipy.sparse
import scipy.sparse.csgraph
from numba import njit

from cellfeat.features.primitives import as_labels, layout

EPS = np.finfo(float).eps


def radial_distribution(
    labels: np.ndarray,
    pixels: np.ndarray,
    *,
    scaled: bool = True,
    bin_count: int = 4,
    maximum_radius: int = 100,
    geometry: tuple | None = None,
) -> dict[str, np.ndarray]:
    """``RadialDistribution_{FracAtD,MeanFrac,RadialCV}_{image}_{k}of{bin_count}`` per object.

    With ``scaled=False`` the overflow bin is reported too, as ``..._{image}_Overflow``.
    Steps 1-4 depend on the labels only: :func:`radial_geometry` computes them once and
    ``geometry=`` reuses them for every channel (the orchestrator does); the result is the same.
    """
    labels, pixels = _check(labels, pixels, bin_count, maximum_radius)
    if geometry is None:
        geometry = radial_geometry(labels, scaled=scaled, bin_count=bin_count, maximum_radius=maximum_radius)
    ys, xs, offsets, bins, wedges = geometry
    if offsets.size - 1 != int(labels.max(initial=0)):
        raise ValueError("geometry was computed for other labels; compute it with radial_geometry(labels, ...)")
    frac, mean_frac, cv = _radial_sums(pixels, ys, xs, offsets, bins, wedges, bin_count)
    return _pack(frac, mean_frac, cv, bin_count, scaled)


def radial_geometry(labels: np.ndarray, *, scaled: bool = True, bin_count: int = 4, maximum_radius: int = 100,
                    **_ignored) -> tuple:  # fmt: skip
    """Steps 1-4 for every object pixel: ``(ys, xs, offsets, bins, wedges)``, pixels grouped by
    object (``offsets``), their bin (-1: not reachable from the centre) and their wedge."""
    labels = as_labels(labels)
    if int(bin_count) < 1:
        raise ValueError(f"bin_count must be at least 1, got {bin_count}")
    if maximum_radius <= 0:
        raise ValueError(f"maximum_radius must be positive, got {maximum_radius}")
    lay = layout(labels)  # the compartment's, shared with the other families
    ys, xs, offsets = lay.rows, lay.cols, lay.offsets
    bins, wedges = _radial_bins(ys, xs, offsets, labels.shape[0], labels.shape[1], int(bin_count), bool(scaled),
                                float(maximum_radius))  # fmt: skip
    return ys, xs, offsets, bins, wedges


def _pack(frac, mean_frac, cv, bin_count, scaled):
    out = {}
    for b in range(bin_count + (0 if scaled else 1)):
        suffix = f"{b + 1}of{bin_count}" if b < bin_count else "Overflow"
        out[f"RadialDistribution_FracAtD_{{image}}_{suffix}"] = np.ascontiguousarray(frac[:, b])
        out[f"RadialDistribution_MeanFrac_{{image}}_{suffix}"] = np.ascontiguousarray(mean_frac[:, b])
        out[f"RadialDistribution_RadialCV_{{image}}_{suffix}"] = np.ascontiguousarray(cv[:, b])
    return out


def _check(labels, pixels, bin_count, maximum_radius):
    labels = as_labels(labels)
    pixels = np.asarray(pixels)
    if labels.shape != pixels.shape:
        raise ValueError(
            f"radial_distribution needs labels and pixels of one shape, got {labels.shape} and {pixels.shape}"
        )
    if int(bin_count) < 1:
        raise ValueError(f"bin_count must be at least 1, got {bin_count}")
    if maximum_radius <= 0:
        raise ValueError(f"maximum_radius must be positive, got {maximum_radius}")
    if not np.issubdtype(pixels.dtype, np.floating):
        pixels = pixels.astype(np.float64)
    return labels, np.ascontiguousarray(pixels)


@njit(cache=True, error_model="numpy")
def _squared_edt(inside):
    """Exact squared Euclidean distance of every ``True`` pixel to the nearest ``False`` pixel.

    Rows by two linear scans (``g``: squared distance along the row), then for each pixel the
    minimum of ``g[y', x] + (y - y')**2`` over the column, scanning outwards from ``y`` and
    stopping once ``(y - y')**2`` alone reaches the best value: the same integers as a full
    separable EDT, in O(distance) per pixel. ``inf`` where the box holds no ``False`` pixel;
    0 on ``False`` pixels.
    """
    h, w = inside.shape
    g = np.empty((h, w))
    for y in range(h):
        last = -1
        for x in range(w):
            if not inside[y, x]:
                last = x
                g[y, x] = 0.0
            else:
                g[y, x] = np.inf if last < 0 else float((x - last) * (x - last))
        last = -1
        for x in range(w - 1, -1, -1):
            if not inside[y, x]:
                last = x
            elif last >= 0:
                g[y, x] = min(g[y, x], float((last - x) * (last - x)))
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            if not inside[y, x]:
                continue
            best = g[y, x]
            dy = 1
            while dy * dy < best and (y - dy >= 0 or y + dy < h):
                if y - dy >= 0:
                    best = min(best, g[y - dy, x] + dy * dy)
                if y + dy < h:
                    best = min(best, g[y + dy, x] + dy * dy)
                dy += 1
            out[y, x] = best
    return out


@njit(cache=True, error_model="numpy")
def _geodesic(inside, start_y, start_x):
    """8-connected geodesic distance (steps 1 and sqrt 2) from ``(start_y, start_x)`` inside ``inside``.

    Raster and anti-raster relaxation sweeps, ``d(v) = min(d(v), d(u) + step)``, alternated until
    one changes nothing (typically 5 sweeps; a FIFO after the first pair measured slower). With
    positive steps and monotone rounding the fixed point reached from "infinity everywhere but
    the start" is unique, so the values equal Dijkstra's (centrosome's ``propagate``) bit for
    bit. Returns an ``(h + 2, w + 2)`` array (a margin of ``inf`` around the box, so the sweeps
    need no bounds checks); ``inf`` marks pixels the start cannot reach.
    """
    h, w = inside.shape
    dist = np.full((h + 2, w + 2), np.inf)
    dist[start_y + 1, start_x + 1] = 0.0
    s2 = np.sqrt(2.0)
    # A forward pass leaves every "from above/left" constraint satisfied, a backward pass every
    # "from below/right" one; once a pass changes nothing after the other kind has run, both
    # hold everywhere and this is the fixed point.
    npass = 0
    while True:
        changed = False
        for y in range(1, h + 1):
            for x in range(1, w + 1):
                if not inside[y - 1, x - 1]:
                    continue  # outside pixels stay inf, so they never relax a neighbour
                best = min(
                    dist[y, x],
                    dist[y - 1, x - 1] + s2,
                    dist[y - 1, x] + 1.0,
                    dist[y - 1, x + 1] + s2,
                    dist[y, x - 1] + 1.0,
                )
                if best < dist[y, x]:
                    dist[y, x] = best
                    changed = True
        npass += 1
        if not changed and npass > 1:
            break
        changed = False
        for y in range(h, 0, -1):
            for x in range(w, 0, -1):
                if not inside[y - 1, x - 1]:
                    continue
                best = min(
                    dist[y, x],
                    dist[y + 1, x + 1] + s2,
                    dist[y + 1, x] + 1.0,
                    dist[y + 1, x - 1] + s2,
                    dist[y, x + 1] + 1.0,
                )
                if best < dist[y, x]:
                    dist[y, x] = best
                    changed = True
        npass += 1
        if not changed:
            break
    return dist


@njit(cache=True, error_model="numpy")
def _radial_bins(ys, xs, offsets, H, W, bin_count, scaled, maximum_radius):
    """Each object pixel's bin (-1 where the centre cannot reach it) and wedge around the centre."""
    n = offsets.size - 1
    bins = np.full(ys.size, -1, np.int64)
    wedges = np.zeros(ys.size, np.int64)
    for obj in range(n):
        start, stop = offsets[obj], offsets[obj + 1]
        if start == stop:
            continue
        y0, y1, x0, x1 = H, -1, W, -1
        for k in range(start, stop):
            y0 = min(y0, ys[k])
            y1 = max(y1, ys[k])
            x0 = min(x0, xs[k])
            x1 = max(x1, xs[k])
        y0 = max(y0 - 1, 0)
        x0 = max(x0 - 1, 0)
        y1 = min(y1 + 1, H - 1)
        x1 = min(x1 + 1, W - 1)
        inside = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.bool_)
        for k in range(start, stop):
            inside[ys[k] - y0, xs[k] - x0] = True
        sq = _squared_edt(inside)
        best = -1.0
        cy = 0
        cx = 0
        for k in range(start, stop):  # raster order: the first maximum wins
            v = sq[ys[k] - y0, xs[k] - x0]
            if v > best:
                best = v
                cy = ys[k] - y0
                cx = xs[k] - x0
        dist = _geodesic(inside, cy, cx)
        for k in range(start, stop):
            ly = ys[k] - y0
            lx = xs[k] - x0
            d = dist[ly + 1, lx + 1]
            if d == np.inf:
                continue  # not reachable from the centre
            if scaled:
                nd = d / (d + np.sqrt(sq[ly, lx]) + 0.001)
            else:
                nd = d / maximum_radius
            b = int(nd * bin_count)
            if b > bin_count:
                b = bin_count
            bins[k] = b
            wedges[k] = (1 if ly > cy else 0) + (2 if lx > cx else 0) + (4 if abs(ly - cy) > abs(lx - cx) else 0)
    return bins, wedges


@njit(cache=True, error_model="numpy")
def _radial_sums(pixels, ys, xs, offsets, bins, wedges, bin_count):
    """Step 5 for one channel, from :func:`_radial_bins`' bins and wedges."""
    n = offsets.size - 1
    nb = bin_count + 1
    frac = np.full((n, nb), np.nan)
    mean_frac = np.full((n, nb), np.nan)
    cv = np.full((n, nb), np.nan)
    hist = np.zeros(nb)
    count = np.zeros(nb)
    wsum = np.zeros((nb, 8))
    wcount = np.zeros((nb, 8))
    for obj in range(n):
        start, stop = offsets[obj], offsets[obj + 1]
        if start == stop:
            continue
        hist[:] = 0.0
        count[:] = 0.0
        wsum[:, :] = 0.0
        wcount[:, :] = 0.0
        for k in range(start, stop):
            b = bins[k]
            if b < 0:
                continue
            value = np.float64(pixels[ys[k], xs[k]])
            hist[b] += value
            count[b] += 1.0
            wsum[b, wedges[k]] += value
            wcount[b, wedges[k]] += 1.0
        total = 0.0
        total_count = 0.0
        for b in range(nb):
            total += hist[b]
            total_count += count[b]
        for b in range(nb):
            f = hist[b] / total
            frac[obj, b] = f
            mean_frac[obj, b] = f / (count[b] / total_count + EPS)
            m = 0
            s = 0.0
            for j in range(8):
                if wcount[b, j] > 0:
                    s += wsum[b, j] / wcount[b, j]
                    m += 1
            if m == 0:
                cv[obj, b] = 0.0
                continue
            mean = s / m
            var = 0.0
            for j in range(8):
                if wcount[b, j] > 0:
                    dv = wsum[b, j] / wcount[b, j] - mean
                    var += dv * dv
            cv[obj, b] = np.sqrt(var / m) / mean
    return frac, mean_frac, cv


# ---------------------------------------------------------------------------------------------
# Plain numpy / scipy reference
# ---------------------------------------------------------------------------------------------


def radial_distribution_reference(
    labels: np.ndarray,
    pixels: np.ndarray,
    *,
    scaled: bool = True,
    bin_count: int = 4,
    maximum_radius: int = 100,
) -> dict[str, np.ndarray]:
    """Slow version of :func:`radial_distribution` (scipy EDT and csgraph Dijkstra per object)."""
    labels, pixels = _check(labels, pixels, bin_count, maximum_radius)
    n = int(labels.max(initial=0))
    nb = bin_count + 1
    frac = np.full((n, nb), np.nan)
    mean_frac = np.full((n, nb), np.nan)
    cv = np.full((n, nb), np.nan)
    H, W = labels.shape
    for lab in range(1, n + 1):
        ys, xs = np.nonzero(labels == lab)
        if ys.size == 0:
            continue
        y0, x0 = max(ys.min() - 1, 0), max(xs.min() - 1, 0)
        y1, x1 = min(ys.max() + 2, H), min(xs.max() + 2, W)
        inside = labels[y0:y1, x0:x1] == lab
        edge = scipy.ndimage.distance_transform_edt(inside)
        flat = np.flatnonzero(inside)
        center = flat[np.argmax(edge.ravel()[flat])]
        h, w = inside.shape
        graph = scipy.sparse.lil_matrix((h * w, h * w))
        for p in flat:
            y, x = divmod(int(p), w)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if (dy or dx) and 0 <= yy < h and 0 <= xx < w and inside[yy, xx]:
                        graph[p, yy * w + xx] = np.sqrt(float(abs(dy) + abs(dx)))
        dist = scipy.sparse.csgraph.dijkstra(graph.tocsr(), indices=int(center))[flat]
        good = np.isfinite(dist)
        flat, dist = flat[good], dist[good]
        e = edge.ravel()[flat]
        nd = dist / (dist + e + 0.001) if scaled else dist / maximum_radius
        bins = np.minimum((nd * bin_count).astype(int), bin_count)
        values = pixels[y0:y1, x0:x1].ravel()[flat]
        hist = np.bincount(bins, values, minlength=nb)
        number = np.bincount(bins, minlength=nb).astype(float)
        frac[lab - 1] = hist / hist.sum()
        mean_frac[lab - 1] = frac[lab - 1] / (number / number.sum() + EPS)
        ly, lx = np.divmod(flat, w)
        cy, cx = divmod(int(center), w)
        wedge = (ly > cy) + 2 * (lx > cx) + 4 * (np.abs(ly - cy) > np.abs(lx - cx))
        for b in range(nb):
            sel = bins == b
            sums = np.bincount(wedge[sel], values[sel], minlength=8)
            counts = np.bincount(wedge[sel], minlength=8)
            means = sums[counts > 0] / counts[counts > 0]
            cv[lab - 1, b] = means.std() / means.mean() if means.size else 0.0
    return _pack(frac, mean_frac, cv, bin_count, scaled)
