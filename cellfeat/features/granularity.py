"""Granularity: the granular spectrum per object, as CellProfiler's MeasureGranularity.

The algorithm is cp_measure's ``get_granularity`` (CellProfiler's MeasureGranularity):

1. Subsample the image by ``subsample_size`` (bilinear ``map_coordinates``, order 1).
2. Remove the background: subsample again by ``image_sample_size``, open it (grey erosion then
   dilation, disk of radius ``element_size``, scikit-image's default ``mode="reflect"``),
   bring it back to the first subsampled grid bilinearly, subtract, clip at 0.
3. ``granular_spectrum_length`` times: erode by a radius-1 disk (the 4-neighbour cross),
   reconstruct the result under the background-free image (greyscale reconstruction by
   dilation), bring the reconstruction back to the original grid bilinearly and take each
   object's mean. ``Granularity_k`` is the fall of that mean at step ``k`` in percent of the
   object's mean raw intensity (step 0 is the raw image).

Only step 3's object means depend on the labels: :func:`granular_reconstructions` does the
rest once per image, and ``granularity(..., reconstructions=...)`` reuses it (the orchestrator
can share it between compartments). Everything runs in float64 (CellProfiler's images are
float64). The kernels: a bilinear resampler with ``map_coordinates``' ``constant`` mode rule
(a sample whose coordinate falls outside ``[0, n - 1]`` is 0); a reflect-mode grey
erosion/dilation; greyscale reconstruction on a max-tree of the background-free image, built
once by union-find, then two linear passes per step (reconstruction only takes minima and
maxima of existing values and its result is unique, so it equals scikit-image's exactly); and
the "upsample then average per object" step as a per-object sparse operator on the subsampled
grid, built once per call. Values agree with cp_measure to round-off (summation order):
~1e-8 relative at worst, on spectrum steps that are themselves tiny differences of means, and
a step that is 0 in one can be ~1e-14 in the other, so tests add an absolute tolerance.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import skimage.morphology
from numba import njit

from cellfeat.features.primitives import as_labels, flatten_labels

EPS = np.finfo(float).eps


def granularity(
    labels: np.ndarray,
    pixels: np.ndarray,
    *,
    subsample_size: float = 0.25,
    image_sample_size: float = 0.25,
    element_size: int = 10,
    granular_spectrum_length: int = 16,
    reconstructions: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Granular spectrum per object: ``Granularity_{k}_{image}`` for k = 1..granular_spectrum_length.

    Steps 1-3's image work does not depend on the labels. A caller measuring several label
    images (nuclei, cells, cytoplasm) on one channel can compute it once with
    :func:`granular_reconstructions` and pass it as ``reconstructions``; the result is the same.
    """
    labels, pixels = _check(labels, pixels)
    n = int(labels.max(initial=0))
    keys = [f"Granularity_{k}_{{image}}" for k in range(1, granular_spectrum_length + 1)]
    shape = np.array(pixels.shape)
    new_shape = (shape * subsample_size).astype(int) if subsample_size < 1 else shape
    if (new_shape < 2).any():  # cp_measure returns NaN where bilinear sampling cannot work
        return {k: np.full(n, np.nan) for k in keys}
    if n == 0:
        return {k: np.empty(0) for k in keys}
    if reconstructions is None:
        reconstructions = granular_reconstructions(
            pixels,
            subsample_size=subsample_size,
            image_sample_size=image_sample_size,
            element_size=element_size,
            granular_spectrum_length=granular_spectrum_length,
        )
    expected = (granular_spectrum_length, int(new_shape[0]), int(new_shape[1]))
    if reconstructions.shape != expected:
        raise ValueError(
            f"reconstructions has shape {reconstructions.shape}, expected {expected} for this image "
            f"and these settings; compute it with granular_reconstructions(pixels, ...) using the same settings"
        )
    order, offsets = flatten_labels(labels, n)
    ri, ci = _upsample_axes(shape, new_shape)
    spectrum = _object_spectrum(pixels, np.ascontiguousarray(reconstructions, np.float64), order, offsets, ri, ci)
    return {k: np.ascontiguousarray(spectrum[:, i]) for i, k in enumerate(keys)}


def reconstructions_for(pixels: np.ndarray, **settings) -> np.ndarray | None:
    """:func:`granular_reconstructions` of one plane as :func:`granularity` computes it (the same
    dtype rule), or None where the image is too small to subsample (granularity gives NaN there).
    ``settings``: granularity's keywords. The orchestrator shares it between compartments."""
    settings = {k: v for k, v in settings.items() if k != "reconstructions"}
    pixels = np.asarray(pixels)
    if not np.issubdtype(pixels.dtype, np.floating):
        pixels = pixels.astype(np.float64)
    subsample_size = settings.get("subsample_size", 0.25)
    shape = np.array(pixels.shape)
    new_shape = (shape * subsample_size).astype(int) if subsample_size < 1 else shape
    if (new_shape < 2).any():
        return None
    return granular_reconstructions(np.ascontiguousarray(pixels), **settings)


def granular_reconstructions(
    pixels: np.ndarray,
    *,
    subsample_size: float = 0.25,
    image_sample_size: float = 0.25,
    element_size: int = 10,
    granular_spectrum_length: int = 16,
) -> np.ndarray:
    """Steps 1-3 without the labels: the ``(granular_spectrum_length, h, w)`` reconstructions."""
    small = background_free(pixels, subsample_size, image_sample_size, element_size)
    order = np.argsort(small, axis=None)  # numpy's sort is several times faster than numba's
    return _reconstructions(small, order, granular_spectrum_length)


def background_free(
    pixels: np.ndarray, subsample_size: float, image_sample_size: float, element_size: int
) -> np.ndarray:
    """Steps 1-2: the subsampled image with its opened background subtracted (float64)."""
    pixels = np.ascontiguousarray(pixels)
    if not np.issubdtype(pixels.dtype, np.floating):
        pixels = pixels.astype(np.float64)
    shape = np.array(pixels.shape)
    if subsample_size < 1:
        new_shape = (shape * subsample_size).astype(int)
        small = _bilinear(pixels, np.arange(new_shape[0]) / subsample_size, np.arange(new_shape[1]) / subsample_size)
    else:
        new_shape = shape
        small = pixels.astype(np.float64)
    if image_sample_size < 1:
        back_shape = new_shape * image_sample_size  # float, as cp_measure's mgrid bounds
        rows = np.arange(0, back_shape[0]) / image_sample_size
        cols = np.arange(0, back_shape[1]) / image_sample_size
        back = _bilinear(small, rows, cols)
    else:
        back_shape = new_shape
        back = small.copy()
    offsets = np.argwhere(skimage.morphology.disk(element_size, dtype=bool)) - element_size
    back = _grey_filter(_grey_filter(back, offsets, True), offsets, False)
    if image_sample_size < 1:
        rows = np.arange(new_shape[0], dtype=float) * ((back_shape[0] - 1) / (new_shape[0] - 1))
        cols = np.arange(new_shape[1], dtype=float) * ((back_shape[1] - 1) / (new_shape[1] - 1))
        back = _bilinear(back, rows, cols)
    small -= back
    small[small < 0] = 0
    return small


def _check(labels, pixels):
    labels = as_labels(labels)
    pixels = np.asarray(pixels)
    if labels.shape != pixels.shape:
        raise ValueError(f"granularity needs labels and pixels of one shape, got {labels.shape} and {pixels.shape}")
    if not np.issubdtype(pixels.dtype, np.floating):
        pixels = pixels.astype(np.float64)
    return labels, np.ascontiguousarray(pixels)


def _upsample_axes(shape, new_shape):
    """Source coordinates on the subsampled grid of every original row and column."""
    ri = np.arange(shape[0], dtype=float) * (float(new_shape[0] - 1) / float(shape[0] - 1))
    ci = np.arange(shape[1], dtype=float) * (float(new_shape[1] - 1) / float(shape[1] - 1))
    return ri, ci


@njit(cache=True, error_model="numpy")
def _bilinear(img, rows, cols):
    """``map_coordinates(img, mgrid-of(rows, cols), order=1, mode="constant", cval=0)``."""
    H, W = img.shape
    out = np.zeros((rows.size, cols.size))
    for a in range(rows.size):
        r = rows[a]
        if r < 0 or r > H - 1:
            continue
        r0 = int(np.floor(r))
        fr = r - r0
        r1 = min(r0 + 1, H - 1)
        for b in range(cols.size):
            c = cols[b]
            if c < 0 or c > W - 1:
                continue
            c0 = int(np.floor(c))
            fc = c - c0
            c1 = min(c0 + 1, W - 1)
            out[a, b] = (
                (1 - fr) * ((1 - fc) * img[r0, c0] + fc * img[r0, c1])
                + fr * ((1 - fc) * img[r1, c0] + fc * img[r1, c1])
            )
    return out


@njit(cache=True, error_model="numpy")
def _reflect(i, n):
    """scipy.ndimage's ``reflect`` (half-sample symmetric) index extension."""
    p = 2 * n
    i = i % p
    if i < 0:
        i += p
    return i if i < n else p - i - 1


@njit(cache=True, error_model="numpy")
def _grey_filter(img, offsets, minimum):
    """Grey erosion (``minimum``) or dilation with a symmetric footprint, ``mode="reflect"``."""
    H, W = img.shape
    r = 0
    for k in range(offsets.shape[0]):
        r = max(r, abs(offsets[k, 0]), abs(offsets[k, 1]))
    padded = np.empty((H + 2 * r, W + 2 * r))
    for y in range(H + 2 * r):
        yy = _reflect(y - r, H)
        for x in range(W + 2 * r):
            padded[y, x] = img[yy, _reflect(x - r, W)]
    # the footprint as one run [x0, x1] of columns per row offset
    lo = np.full(2 * r + 1, r + 1, np.int64)
    hi = np.full(2 * r + 1, -r - 1, np.int64)
    for k in range(offsets.shape[0]):
        dy = offsets[k, 0] + r
        lo[dy] = min(lo[dy], offsets[k, 1])
        hi[dy] = max(hi[dy], offsets[k, 1])
    symmetric = True  # every footprint row a centred run [-k, k] (a disk's rows are)
    for dy in range(2 * r + 1):
        if hi[dy] >= 0 and lo[dy] != -hi[dy]:
            symmetric = False
    out = np.empty_like(img)
    if not symmetric:
        for y in range(H):
            for x in range(W):
                best = np.inf if minimum else -np.inf
                for dy in range(2 * r + 1):
                    for xx in range(x + r + lo[dy], x + r + hi[dy] + 1):
                        v = padded[y + dy, xx]
                        if minimum:
                            best = min(best, v)
                        else:
                            best = max(best, v)
                out[y, x] = best
        return out
    # runs[k, y, x]: min (max) of padded[y, x - k : x + k + 1], from runs[k - 1] in O(1) each
    R, Wp = H + 2 * r, W + 2 * r
    runs = np.empty((r + 1, R, Wp))
    runs[0] = padded
    for k in range(1, r + 1):
        for y in range(R):
            for x in range(k, Wp - k):
                a = runs[k - 1, y, x - 1]
                b = runs[k - 1, y, x + 1]
                if k == 1:  # [x-1, x+1] needs the centre too; later the two halves overlap
                    a = min(a, padded[y, x]) if minimum else max(a, padded[y, x])
                runs[k, y, x] = min(a, b) if minimum else max(a, b)
    for y in range(H):
        for x in range(W):
            best = np.inf if minimum else -np.inf
            for dy in range(2 * r + 1):
                if hi[dy] >= 0:
                    v = runs[hi[dy], y + dy, x + r]
                    best = min(best, v) if minimum else max(best, v)
            out[y, x] = best
    return out


@njit(cache=True, error_model="numpy")
def _erode_cross(src, dst, h, w):
    """Grey erosion by ``disk(1)`` of a flat ``h x w`` image, ``mode="reflect"``.

    At the border the missing neighbour reflects onto the pixel itself, which is already in
    the minimum, so it simply drops out.
    """
    for y in range(h):
        for x in range(w):
            p = y * w + x
            v = src[p]
            if y > 0:
                v = min(v, src[p - w])
            if y < h - 1:
                v = min(v, src[p + w])
            if x > 0:
                v = min(v, src[p - 1])
            if x < w - 1:
                v = min(v, src[p + 1])
            dst[p] = v


@njit(cache=True, error_model="numpy")
def _axis_weights(coords, size):
    """Bilinear corners and weights of each source coordinate; ``valid`` is False outside the grid."""
    m = coords.size
    lo = np.empty(m, np.int64)
    hi = np.empty(m, np.int64)
    frac = np.empty(m)
    valid = np.empty(m, np.bool_)
    for i in range(m):
        c = coords[i]
        valid[i] = c >= 0 and c <= size - 1
        f = int(np.floor(c)) if valid[i] else 0
        lo[i] = f
        hi[i] = min(f + 1, size - 1)
        frac[i] = c - f
    return lo, hi, frac, valid


@njit(cache=True, error_model="numpy")
def _object_operator(order, offsets, W, ri, ci, h, w):
    """Per-object bilinear weights on the subsampled grid, CSR: object -> (grid index, weight).

    Row ``o`` summed against a subsampled image and divided by the object's pixel count is the
    object's mean of that image restored to the original grid; pixels whose source coordinate
    falls outside the grid contribute 0 (and still count), as ``map_coordinates`` does. Each
    object's weights are gathered in a dense scratch over its box on the subsampled grid.
    """
    n = offsets.size - 1
    r0, r1, fr, rok = _axis_weights(ri, h)
    c0, c1, fc, cok = _axis_weights(ci, w)
    boxes = np.zeros((n, 4), np.int64)  # R0, R1, C0, C1 on the subsampled grid
    nnz = 0
    for obj in range(n):
        s, e = offsets[obj], offsets[obj + 1]
        if s == e:
            continue
        xmin = W
        xmax = -1
        for k in range(s, e):
            x = order[k] % W
            xmin = min(xmin, x)
            xmax = max(xmax, x)
        R0 = r0[order[s] // W]  # raster order: the first and last pixels hold the extreme rows
        R1 = r1[order[e - 1] // W]
        C0 = c0[xmin]
        C1 = c1[xmax]
        boxes[obj, 0], boxes[obj, 1], boxes[obj, 2], boxes[obj, 3] = R0, R1, C0, C1
        nnz += (R1 - R0 + 1) * (C1 - C0 + 1)
    indptr = np.zeros(n + 1, np.int64)
    indices = np.empty(nnz, np.int64)
    weights = np.zeros(nnz)
    pos = 0
    for obj in range(n):
        s, e = offsets[obj], offsets[obj + 1]
        if s < e:
            R0, R1, C0, C1 = boxes[obj, 0], boxes[obj, 1], boxes[obj, 2], boxes[obj, 3]
            bw = C1 - C0 + 1
            box = weights[pos : pos + (R1 - R0 + 1) * bw]
            for k in range(s, e):
                p = order[k]
                y = p // W
                x = p - y * W
                if not (rok[y] and cok[x]):
                    continue
                a = (r0[y] - R0) * bw
                b = (r1[y] - R0) * bw
                u = c0[x] - C0
                v = c1[x] - C0
                box[a + u] += (1 - fr[y]) * (1 - fc[x])
                box[a + v] += (1 - fr[y]) * fc[x]
                box[b + u] += fr[y] * (1 - fc[x])
                box[b + v] += fr[y] * fc[x]
            for R in range(R0, R1 + 1):
                for C in range(C0, C1 + 1):
                    indices[pos] = R * w + C
                    pos += 1
        indptr[obj + 1] = pos
    return indptr, indices, weights


@njit(cache=True, error_model="numpy")
def _find_root(zpar, p):
    while zpar[p] != p:  # path halving
        zpar[p] = zpar[zpar[p]]
        p = zpar[p]
    return p


@njit(cache=True, error_model="numpy")
def _max_tree(order, h, w):
    """Max-tree of a ``h x w`` image, 4-connected (Berger et al. 2007, union-find).

    ``order`` lists the pixels by increasing value (``order[0]`` becomes the root); returns each
    pixel's parent, which always comes earlier in ``order``. The subtree of a pixel whose parent
    is lower is one connected component of an upper level set ``{f >= t}``.
    """
    n = h * w
    parent = np.empty(n, np.int64)
    zpar = np.full(n, -1, np.int64)
    for i in range(n - 1, -1, -1):
        p = order[i]
        parent[p] = p
        zpar[p] = p
        y = p // w
        x = p - y * w
        for k in range(4):
            if k == 0:
                if y == 0:
                    continue
                q = p - w
            elif k == 1:
                if y == h - 1:
                    continue
                q = p + w
            elif k == 2:
                if x == 0:
                    continue
                q = p - 1
            else:
                if x == w - 1:
                    continue
                q = p + 1
            if zpar[q] >= 0:
                r = _find_root(zpar, q)
                if r != p:
                    parent[r] = p
                    zpar[r] = p
    return parent


@njit(cache=True, error_model="numpy")
def _reconstruct_max_tree(order, parent, mask, seed, submax, out):
    """Greyscale reconstruction by dilation of ``seed <= mask`` on ``mask``'s max-tree.

    ``rec(p)`` is the highest ``t <= mask(p)`` whose level component around ``p`` holds a seed
    value ``>= t``: with ``submax`` the seed maximum over each subtree, the maximum of
    ``min(level, submax)`` over ``p``'s ancestors. Only max/min of existing values, so it equals
    scikit-image's ``reconstruction`` exactly.
    """
    n = order.size
    for i in range(n):
        submax[i] = seed[i]
    for i in range(n - 1, 0, -1):  # children before parents
        p = order[i]
        q = parent[p]
        if submax[p] > submax[q]:
            submax[q] = submax[p]
    root = order[0]
    out[root] = min(mask[root], submax[root])
    for i in range(1, n):  # parents before children
        p = order[i]
        v = min(mask[p], submax[p])
        q = out[parent[p]]
        out[p] = v if v > q else q


@njit(cache=True, error_model="numpy")
def _reconstructions(small, order, ng):
    """``ng`` times: erode by the cross, reconstruct under ``small``; returns ``(ng, h, w)``.

    The max-tree of ``small`` (``order``: its pixels sorted by value) is built once; each step
    is then two linear passes over it.
    """
    h, w = small.shape
    out = np.empty((ng, h, w))
    flat = small.ravel().copy()
    parent = _max_tree(order, h, w)
    ero = flat.copy()
    nxt = np.empty(h * w)
    submax = np.empty(h * w)
    for step in range(ng):
        _erode_cross(ero, nxt, h, w)
        ero, nxt = nxt, ero
        # the seed is ero itself: erosion never exceeds the image it erodes, so ero <= small
        _reconstruct_max_tree(order, parent, flat, ero, submax, out[step].ravel())
    return out


@njit(cache=True, error_model="numpy")
def _object_spectrum(pixels, recs, order, offsets, ri, ci):
    """Each object's mean of every reconstruction restored to the original grid, differenced."""
    H, W = pixels.shape
    ng, h, w = recs.shape
    n = offsets.size - 1
    out = np.empty((n, ng))
    if n == 0:
        return out
    current = np.empty(n)
    start = np.empty(n)
    flat = pixels.ravel()
    for obj in range(n):
        s = 0.0
        for k in range(offsets[obj], offsets[obj + 1]):
            s += np.float64(flat[order[k]])
        current[obj] = s / (offsets[obj + 1] - offsets[obj])  # NaN for a label with no pixels
        start[obj] = max(current[obj], EPS)
    indptr, indices, weights = _object_operator(order, offsets, W, ri, ci, h, w)
    for step in range(ng):
        rec = recs[step].ravel()
        for obj in range(n):
            count = offsets[obj + 1] - offsets[obj]
            s = 0.0
            for t in range(indptr[obj], indptr[obj + 1]):
                s += weights[t] * rec[indices[t]]
            new = s / count
            out[obj, step] = (current[obj] - new) * 100 / start[obj]
            current[obj] = new
    return out


# ---------------------------------------------------------------------------------------------
# Plain numpy / scipy / scikit-image reference
# ---------------------------------------------------------------------------------------------


def granularity_reference(
    labels: np.ndarray,
    pixels: np.ndarray,
    *,
    subsample_size: float = 0.25,
    image_sample_size: float = 0.25,
    element_size: int = 10,
    granular_spectrum_length: int = 16,
) -> dict[str, np.ndarray]:
    """Slow version of :func:`granularity` with scipy/scikit-image calls, for tests."""
    labels, pixels = _check(labels, pixels)
    pixels = pixels.astype(np.float64)
    n = int(labels.max(initial=0))
    keys = [f"Granularity_{k}_{{image}}" for k in range(1, granular_spectrum_length + 1)]
    shape = np.array(pixels.shape)
    new_shape = (shape * subsample_size).astype(int) if subsample_size < 1 else shape
    if (new_shape < 2).any():
        return {k: np.full(n, np.nan) for k in keys}

    def resample(img, rows, cols):
        i, j = np.meshgrid(rows, cols, indexing="ij")
        return scipy.ndimage.map_coordinates(img, (i, j), order=1)

    small = pixels.copy()
    if subsample_size < 1:
        small = resample(pixels, np.arange(new_shape[0]) / subsample_size, np.arange(new_shape[1]) / subsample_size)
    back_shape = new_shape * image_sample_size if image_sample_size < 1 else new_shape
    back = small
    if image_sample_size < 1:
        back = resample(
            small, np.arange(0, back_shape[0]) / image_sample_size, np.arange(0, back_shape[1]) / image_sample_size
        )
    disk = skimage.morphology.disk(element_size, dtype=bool)
    back = skimage.morphology.dilation(skimage.morphology.erosion(back, footprint=disk), footprint=disk)
    if image_sample_size < 1:
        back = resample(
            back,
            np.arange(new_shape[0], dtype=float) * ((back_shape[0] - 1) / (new_shape[0] - 1)),
            np.arange(new_shape[1], dtype=float) * ((back_shape[1] - 1) / (new_shape[1] - 1)),
        )
    small = np.maximum(small - back, 0)
    index = np.arange(1, n + 1)
    with np.errstate(invalid="ignore"):
        current = np.asarray(scipy.ndimage.mean(pixels, labels, index), float).reshape(n)
    start = np.maximum(current, EPS)
    ri, ci = _upsample_axes(shape, new_shape)
    cross = skimage.morphology.disk(1, dtype=bool)
    ero = small.copy()
    out = {}
    for key in keys:
        ero = skimage.morphology.erosion(ero, footprint=cross)
        rec = skimage.morphology.reconstruction(ero, small, footprint=cross)
        with np.errstate(invalid="ignore"):
            new = np.asarray(scipy.ndimage.mean(resample(rec, ri, ci), labels, index), float).reshape(n)
        out[key] = (current - new) * 100 / start
        current = new
    return out
