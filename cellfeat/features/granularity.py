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
shares it between compartments); the labels' part, :func:`granularity_geometry`, is likewise
computed once a compartment and shared between channels. Everything runs in float64
(CellProfiler's images are float64). The kernels: a bilinear resampler with
``map_coordinates``' ``constant`` mode rule (a sample whose coordinate falls outside
``[0, n - 1]`` is 0); the greyscale morphology of :mod:`cellfeat.features.greymorph` (a
reflect-mode grey erosion/dilation; reconstruction on a max-tree of the background-free image,
built once by union-find, then two linear passes per step, equal to scikit-image's exactly);
and the "upsample then average per object" step as a per-object sparse operator on the
subsampled grid (its non-zero weights only). Values agree with cp_measure to round-off (summation order):
~1e-8 relative at worst, on spectrum steps that are themselves tiny differences of means, and
a step that is 0 in one can be ~1e-14 in the other, so tests add an absolute tolerance.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import skimage.morphology
from numba import njit

from cellfeat.features.greymorph import grey_filter, reconstructions_by_steps
from cellfeat.features.primitives import as_labels, layout

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
    geometry: tuple | None = None,
) -> dict[str, np.ndarray]:
    """Granular spectrum per object: ``Granularity_{k}_{image}`` for k = 1..granular_spectrum_length.

    Steps 1-3's image work does not depend on the labels. A caller measuring several label
    images (nuclei, cells, cytoplasm) on one channel can compute it once with
    :func:`granular_reconstructions` and pass it as ``reconstructions``, and one measuring
    several channels on one label image its labels' part once with :func:`granularity_geometry`
    (``geometry``); the result is the same.
    """
    labels, pixels = _check(labels, pixels)
    n = int(labels.max(initial=0))
    keys = [f"Granularity_{k}_{{image}}" for k in range(1, granular_spectrum_length + 1)]
    new_shape = _subsampled_shape(pixels.shape, subsample_size)
    if new_shape is None:  # cp_measure returns NaN where bilinear sampling cannot work
        return {k: np.full(n, np.nan) for k in keys}
    if n == 0:
        return {k: np.empty(0) for k in keys}
    if geometry is None:
        geometry = granularity_geometry(labels, subsample_size=subsample_size)
    elif geometry[0] != labels.shape or geometry[1] != subsample_size or geometry[3].size != n + 1:
        raise ValueError(
            "geometry was computed for other labels or another subsample_size; "
            "compute it with granularity_geometry(labels, subsample_size=...)"
        )
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
    _, _, order, offsets, indptr, indices, weights = geometry
    by_pixel = np.asarray(reconstructions, np.float64).transpose(1, 2, 0)  # (h, w, steps): a view for ours
    by_pixel = np.ascontiguousarray(by_pixel).reshape(-1, granular_spectrum_length)
    spectrum = _object_spectrum(pixels, by_pixel, order, offsets, indptr, indices, weights)
    return {k: np.ascontiguousarray(spectrum[:, i]) for i, k in enumerate(keys)}


def granularity_geometry(labels: np.ndarray, *, subsample_size: float = 0.25, **_ignored) -> tuple | None:
    """The labels' part of :func:`granularity`, the same for every channel (the orchestrator
    computes it once a compartment): ``(shape, subsample_size, order, offsets, indptr, indices,
    weights)``, the pixels grouped by object and each object's "restore to the original grid,
    then average" operator on the subsampled grid (its non-zero weights, CSR). None where the
    image is too small to subsample (granularity gives NaN there)."""
    labels = as_labels(labels)
    new_shape = _subsampled_shape(labels.shape, subsample_size)
    if new_shape is None:
        return None
    lay = layout(labels)  # the compartment's, shared with the other families
    order, offsets = lay.order, lay.offsets
    ri, ci = _upsample_axes(np.array(labels.shape), new_shape)
    operator = _nonzero(*_object_operator(order, offsets, labels.shape[1], ri, ci, int(new_shape[0]), int(new_shape[1])))
    return (labels.shape, subsample_size, order, offsets, *operator)


def reconstructions_for(pixels: np.ndarray, **settings) -> np.ndarray | None:
    """:func:`granular_reconstructions` of one plane as :func:`granularity` computes it (the same
    dtype rule), or None where the image is too small to subsample (granularity gives NaN there).
    ``settings``: granularity's keywords. The orchestrator shares it between compartments."""
    settings = {k: v for k, v in settings.items() if k not in ("reconstructions", "geometry")}
    pixels = np.asarray(pixels)
    if not np.issubdtype(pixels.dtype, np.floating):
        pixels = pixels.astype(np.float64)
    if _subsampled_shape(pixels.shape, settings.get("subsample_size", 0.25)) is None:
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
    """Steps 1-3 without the labels: the ``(granular_spectrum_length, h, w)`` reconstructions,
    held step-minor in memory (a transposed view of ``(h, w, steps)``: a pixel's steps side by
    side, as :func:`granularity` reads them)."""
    small = background_free(pixels, subsample_size, image_sample_size, element_size)
    order = np.argsort(small, axis=None)  # numpy's sort is several times faster than numba's
    h, w = small.shape
    return reconstructions_by_steps(small, order, granular_spectrum_length).reshape(h, w, -1).transpose(2, 0, 1)


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
    back = grey_filter(grey_filter(back, offsets, True), offsets, False)
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


def _subsampled_shape(shape: tuple[int, ...], subsample_size: float) -> np.ndarray | None:
    """The image's shape after subsampling by ``subsample_size`` (as cp_measure truncates it), or
    None where a side would be under 2 pixels (bilinear sampling cannot work: NaN features)."""
    shape = np.array(shape)
    new_shape = (shape * subsample_size).astype(int) if subsample_size < 1 else shape
    return None if (new_shape < 2).any() else new_shape


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


@njit(cache=True)
def _nonzero(indptr, indices, weights):
    """The CSR operator without its zero weights (box cells no pixel of the object reaches)."""
    n = indptr.size - 1
    keep = np.zeros(n + 1, np.int64)
    out_i = np.empty(indices.size, np.int64)
    out_w = np.empty(weights.size)
    pos = 0
    for obj in range(n):
        for t in range(indptr[obj], indptr[obj + 1]):
            if weights[t] != 0:
                out_i[pos] = indices[t]
                out_w[pos] = weights[t]
                pos += 1
        keep[obj + 1] = pos
    return keep, out_i[:pos].copy(), out_w[:pos].copy()


@njit(cache=True, error_model="numpy")
def _object_spectrum(pixels, by_pixel, order, offsets, indptr, indices, weights):
    """Each object's mean of every reconstruction restored to the original grid, differenced:
    ``by_pixel`` is ``(h * w, steps)``, so one pass over an object's operator sums every step."""
    ng = by_pixel.shape[1]
    n = offsets.size - 1
    out = np.empty((n, ng))
    if n == 0:
        return out
    flat = pixels.ravel()
    acc = np.empty(ng)
    for obj in range(n):
        s = 0.0
        for k in range(offsets[obj], offsets[obj + 1]):
            s += np.float64(flat[order[k]])
        count = offsets[obj + 1] - offsets[obj]
        current = s / count  # NaN for a label with no pixels
        start = max(current, EPS)
        acc[:] = 0.0
        for t in range(indptr[obj], indptr[obj + 1]):
            idx = indices[t]
            wt = weights[t]
            for step in range(ng):
                acc[step] += wt * by_pixel[idx, step]
        for step in range(ng):
            new = acc[step] / count
            out[obj, step] = (current - new) * 100 / start
            current = new
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
