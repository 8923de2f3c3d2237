"""CellProfiler's morphology helpers that its object identification calls, as numba kernels.

CellProfiler's IdentifyPrimary/SecondaryObjects (``cellprofiler_library``) call, besides scipy
and scikit-image, four compiled helpers of ``centrosome`` (``cpmorphology``, ``propagate``).
These are ports that give the same output on the same input (tests compare with ``centrosome``
where it is installed); :mod:`cellfeat.segment.cellprofiler` builds the modules from them.

* :func:`fill_labeled_holes`: background pieces enclosed by one object become that object
  (``cpmorphology.fill_labeled_holes``, its graph walk included: an object inside another's
  hole is filled too);
* :func:`is_local_maximum`: pixels no lower than every pixel of their own object under a
  footprint (``cpmorphology.is_local_maximum``);
* :func:`binary_shrink`: blobs thinned to single points by CellProfiler's four thinning tables,
  applied in its order (``cpmorphology.binary_shrink``);
* :func:`watershed`: scikit-image's marker watershed as it was up to 0.24, which CellProfiler's
  results follow (0.25 rewrote it: markers enter the queue at minus infinity and a pixel's cost
  is at least its parent's, which moves boundaries between touching nuclei);
* :func:`strel_disk`: as ``cpmorphology``'s (its ``relabel`` is
  :func:`cellfeat.segment.objects.relabel_sequential`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numba
import numpy as np
from scipy import ndimage as ndi

FOUR_CONNECT = ndi.generate_binary_structure(2, 1)


def strel_disk(radius: float) -> np.ndarray:
    """A disk of ``radius`` (pixels within it, centre included), as float like centrosome's."""
    r = int(radius)
    x, y = np.mgrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y <= radius * radius).astype(float)


# --------------------------------------------------------------------------- holes


@numba.njit(cache=True, nogil=True)
def _adjacent_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (i, j) and (j, i) of 4-adjacent pixels with different labels, with duplicates."""
    rows, cols = labels.shape
    n = 0
    for r in range(rows):
        for c in range(cols):
            if r + 1 < rows and labels[r, c] != labels[r + 1, c]:
                n += 1
            if c + 1 < cols and labels[r, c] != labels[r, c + 1]:
                n += 1
    a = np.empty(2 * n, np.int64)
    b = np.empty(2 * n, np.int64)
    k = 0
    for r in range(rows):
        for c in range(cols):
            x = labels[r, c]
            if r + 1 < rows and x != labels[r + 1, c]:
                a[k], b[k], a[k + 1], b[k + 1] = x, labels[r + 1, c], labels[r + 1, c], x
                k += 2
            if c + 1 < cols and x != labels[r, c + 1]:
                a[k], b[k], a[k + 1], b[k + 1] = x, labels[r, c + 1], labels[r, c + 1], x
                k += 2
    return a, b


@numba.njit(cache=True, nogil=True)
def _walk_holes(j: np.ndarray, start: np.ndarray, count: np.ndarray, is_not_hole: np.ndarray,
                to_do: np.ndarray, to_do_count: int, lcount: int) -> np.ndarray:  # fmt: skip
    """centrosome's ``fill_labeled_holes_loop``: which regions are holes, and their filler."""
    n = len(is_not_hole)
    adjacent_non_hole = np.zeros(n, np.int64)
    while to_do_count > 0:
        ii = to_do[to_do_count - 1]
        to_do_count -= 1
        for k in range(start[ii], start[ii] + count[ii]):
            jj = j[k]
            if is_not_hole[jj] == 0:
                if ii <= lcount:
                    if adjacent_non_hole[jj] == 0:
                        adjacent_non_hole[jj] = ii
                        continue
                    elif adjacent_non_hole[jj] == ii:
                        continue
                elif jj > lcount:
                    continue
                is_not_hole[jj] = 1
                to_do[to_do_count] = jj
                to_do_count += 1
    to_do_count = 0
    for jj in range(n):
        if is_not_hole[jj] == 0 and adjacent_non_hole[jj] != 0:
            to_do[to_do_count] = jj
            to_do_count += 1
    while to_do_count > 0:
        ii = to_do[to_do_count - 1]
        to_do_count -= 1
        for k in range(start[ii], start[ii] + count[ii]):
            jj = j[k]
            if is_not_hole[jj] == 0 and adjacent_non_hole[jj] == 0:
                adjacent_non_hole[jj] = adjacent_non_hole[ii]
                to_do[to_do_count] = jj
                to_do_count += 1
    return adjacent_non_hole


def fill_labeled_holes(labels: np.ndarray, mask: np.ndarray | None = None,
                       size_fn: Callable[[int, bool], bool] | None = None) -> np.ndarray:  # fmt: skip
    """Fill background pieces that are holes of one object (centrosome's rules and walk).

    ``mask``: only pixels where it is True are background that may be filled; ``size_fn(area,
    is_object)``: a region for which it is False is taken as not a hole (IdentifyPrimaryObjects
    passes ``area < max_diameter**2``)."""
    dtype = labels.dtype
    background = labels == 0
    if mask is not None:
        background &= mask
    blabels, count = ndi.label(background, FOUR_CONNECT)
    lcount = int(labels.max()) if labels.size else 0
    work = _with_background(np.ascontiguousarray(labels), blabels, lcount)
    lmax = lcount + count + 1
    is_not_hole = np.zeros(lmax + 1, np.uint8)
    edge = np.unique(np.hstack((work[0, :], work[:, 0], work[-1, :], work[:, -1])))
    edge = edge[edge != 0]
    is_not_hole[edge] = 1
    to_do = list(edge)
    a, b = _adjacent_pairs(work)
    adjacent_non_hole = np.zeros(lmax + 1, np.int64)
    if len(a):
        keys = np.unique(a * (lmax + 1) + b)  # sorted by (i, j), unique
        i, j = keys // (lmax + 1), keys % (lmax + 1)
        i_count = np.bincount(i, minlength=lmax + 1)
        start = np.concatenate(([0], np.cumsum(i_count)[:-1]))
        if size_fn is not None:
            areas = np.bincount(work.ravel())
            for ii, area in enumerate(areas):
                if ii > 0 and area > 0 and not is_not_hole[ii] and not size_fn(area, ii <= lcount):
                    is_not_hole[ii] = 1
                    to_do.append(ii)
        stack = np.zeros(max(len(is_not_hole), len(to_do)), np.int64)
        stack[: len(to_do)] = to_do
        adjacent_non_hole = _walk_holes(j, start, i_count, is_not_hole, stack, len(to_do), lcount)
    new = np.arange(lmax + 1, dtype=np.int64)
    new[lcount + 1 :] = 0
    holes = is_not_hole == 0
    new[holes] = adjacent_non_hole[holes]
    out = np.empty(work.shape, dtype)
    _renumber(work, new, np.ones((1, 1), bool) if mask is None else np.ascontiguousarray(mask, bool), out)
    return out


@numba.njit(cache=True, nogil=True)
def _with_background(labels, blabels, lcount):
    """The labels as int64, each background piece ``b`` (of ``blabels``) as ``lcount + 1 + b``."""
    work = np.empty(labels.shape, np.int64)
    for r in range(labels.shape[0]):
        for c in range(labels.shape[1]):
            b = blabels[r, c]
            work[r, c] = b + lcount + 1 if b != 0 else labels[r, c]
    return work


@numba.njit(cache=True, nogil=True)
def _renumber(work, new, mask, out):
    """``out = new[work]`` where ``mask`` (a 1 x 1 array: everywhere), ``work`` elsewhere."""
    everywhere = mask.shape != work.shape
    for r in range(work.shape[0]):
        for c in range(work.shape[1]):
            out[r, c] = new[work[r, c]] if everywhere or mask[r, c] else work[r, c]


# --------------------------------------------------------------------------- maxima


@numba.njit(cache=True, nogil=True)
def _local_maximum(image: np.ndarray, labels: np.ndarray, di: np.ndarray, dj: np.ndarray) -> np.ndarray:
    rows, cols = labels.shape
    out = np.zeros((rows, cols), np.bool_)
    for r in range(rows):
        for c in range(cols):
            lab = labels[r, c]
            if lab <= 0:
                continue
            v = image[r, c]
            keep = True
            for k in range(len(di)):
                rr, cc = r + di[k], c + dj[k]
                if 0 <= rr < rows and 0 <= cc < cols and labels[rr, cc] == lab and v < image[rr, cc]:
                    keep = False
                    break
            out[r, c] = keep
    return out


def is_local_maximum(image: np.ndarray, labels: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Labelled pixels no lower than any pixel of the same label under ``footprint`` (odd-sized,
    centred on the pixel)."""
    footprint = np.asarray(footprint) != 0
    extent = (np.array(footprint.shape) - 1) // 2
    if np.all(extent == 0):
        return labels > 0
    offsets = np.mgrid[[slice(-e, e + 1) for e in extent]][:, footprint]
    distance = (offsets**2).sum(0)
    offsets = offsets[:, distance > 0]
    # nearest first (the test does not depend on the order): a pixel that is not a maximum
    # usually has a higher neighbour next to it, and the scan stops there
    offsets = offsets[:, np.argsort(distance[distance > 0], kind="stable")]
    return _local_maximum(np.ascontiguousarray(image), np.ascontiguousarray(labels),
                          offsets[0].astype(np.int64), offsets[1].astype(np.int64))  # fmt: skip


# --------------------------------------------------------------------------- shrink


def _pattern_of(index: int) -> np.ndarray:
    return np.array([[index & 2**k for k in range(3 * r, 3 * r + 3)] for r in range(3)], bool)


def _index_of(pattern: np.ndarray) -> int:
    return int(sum(int(pattern[k // 3, k % 3]) << k for k in range(9)))


def _make_table(value: bool, pattern, care) -> np.ndarray:
    pattern, care = np.asarray(pattern, bool), np.asarray(care, bool)
    out = np.empty(512, bool)
    for index in range(512):
        bits = _pattern_of(index)
        out[index] = value if np.all((bits == pattern) | ~care) else not value
    return out


def _shrink_tables() -> np.ndarray:
    """centrosome's four thinning tables (upper-left-right, upper-right-bottom, lower-right-left,
    lower-left-top), True: the centre pixel stays."""
    erode = np.array([_pattern_of(i)[1, 1] and ndi.label(_pattern_of(i - 16))[1] != 1 for i in range(512)])
    erode[_index_of(np.ones((3, 3), bool))] = True
    specs = (
        (([[0, 0, 0], [1, 1, 0], [0, 0, 0]], [[0, 0, 0], [1, 1, 1], [0, 0, 0]]),
         ([[1, 0, 0], [0, 1, 0], [0, 0, 0]], [[1, 0, 0], [0, 1, 1], [0, 1, 1]])),
        (([[0, 1, 0], [0, 1, 0], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]]),
         ([[0, 0, 1], [0, 1, 0], [0, 0, 0]], [[0, 0, 1], [1, 1, 0], [1, 1, 0]])),
        (([[0, 0, 0], [0, 1, 1], [0, 0, 0]], [[0, 0, 0], [1, 1, 1], [0, 0, 0]]),
         ([[0, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 1, 0], [1, 1, 0], [0, 0, 1]])),
        (([[0, 0, 0], [0, 1, 0], [0, 1, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]]),
         ([[0, 0, 0], [0, 1, 0], [1, 0, 0]], [[0, 1, 1], [0, 1, 1], [1, 0, 0]])),
    )  # fmt: skip
    return np.stack([erode | (_make_table(False, *first) & _make_table(False, *second)) for first, second in specs])


@functools.cache
def shrink_tables() -> np.ndarray:
    return _shrink_tables()


@numba.njit(cache=True, nogil=True)
def _shrink(padded: np.ndarray, ii: np.ndarray, jj: np.ndarray, tables: np.ndarray) -> int:
    """Thin in place until nothing changes; returns the number of pixels left (first in ii/jj)."""
    n = len(ii)
    doomed = np.zeros(n, np.bool_)
    for _ in range(max(n, 1)):
        before = n
        for t in range(tables.shape[0]):
            for k in range(n):
                i, j = ii[k], jj[k]
                index = ((padded[i - 1, j - 1] == 1) * 1 + (padded[i - 1, j] == 1) * 2 + (padded[i - 1, j + 1] == 1) * 4
                         + (padded[i, j - 1] == 1) * 8 + 16 + (padded[i, j + 1] == 1) * 32
                         + (padded[i + 1, j - 1] == 1) * 64 + (padded[i + 1, j] == 1) * 128
                         + (padded[i + 1, j + 1] == 1) * 256)  # fmt: skip
                doomed[k] = not tables[t, index]
            m = 0
            for k in range(n):
                if doomed[k]:
                    padded[ii[k], jj[k]] = 0
                else:
                    ii[m], jj[m] = ii[k], jj[k]
                    m += 1
            n = m
        if n == before:
            break
    return n


def binary_shrink(image: np.ndarray) -> np.ndarray:
    """Each blob thinned to a point (rings to rings), as ``cpmorphology.binary_shrink``."""
    image = np.asarray(image)
    mask = image.astype(bool)
    padded = np.zeros((image.shape[0] + 2, image.shape[1] + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    ii, jj = np.nonzero(mask)
    ii, jj = (ii + 1).astype(np.int64), (jj + 1).astype(np.int64)
    n = _shrink(padded, ii, jj, shrink_tables())
    out = np.zeros_like(image)
    out[ii[:n] - 1, jj[:n] - 1] = image[ii[:n] - 1, jj[:n] - 1]
    return out


# --------------------------------------------------------------------------- watershed


@numba.njit(cache=True, nogil=True, inline="always")
def _push(heap, items, key, age, index):
    """The heap's push: the new item rises while strictly smaller, in (key, age), than its parent
    (parents moved down into the hole, not swapped: the same places). Returns the heap, grown
    where it was full."""
    if 3 * items == len(heap):
        grown = np.empty(2 * len(heap), np.int64)
        grown[: 3 * items] = heap[: 3 * items]
        heap = grown
    child = items
    while child > 0:
        parent = (child + 1) // 2 - 1
        pk = heap[3 * parent]
        if not (key < pk or (key == pk and age < heap[3 * parent + 1])):
            break
        heap[3 * child], heap[3 * child + 1], heap[3 * child + 2] = pk, heap[3 * parent + 1], heap[3 * parent + 2]
        child = parent
    heap[3 * child], heap[3 * child + 1], heap[3 * child + 2] = key, age, index
    return heap


@numba.njit(cache=True, nogil=True)
def _flood(keys, markers, mask, offsets, output):
    """scikit-image 0.24's ``watershed_raveled`` (no compactness, no watershed line) with its
    binary heap, item for item: pixels ordered by (value, age), markers pushed at their value
    with age 0, a neighbour labelled when it is pushed. ``keys``: the values as int64 in the
    same order (:func:`_prepare`); an item is three int64s side by side (key, age, index)."""
    heap = np.empty(3 * max(len(markers), 1024), np.int64)
    items = 0
    counter = 1
    for k in range(len(markers)):
        heap = _push(heap, items, keys[markers[k]], 0, markers[k])
        items += 1
    while items > 0:
        p = heap[2]
        items -= 1
        if items > 0:  # the last item to the root, sifted down (moved, not swapped)
            key, age, index = heap[3 * items], heap[3 * items + 1], heap[3 * items + 2]
            i = 0
            while True:
                left = 2 * i + 1
                if left >= items:
                    break
                smallest, sk, sa = i, key, age
                lk, la = heap[3 * left], heap[3 * left + 1]
                if lk < sk or (lk == sk and la < sa):
                    smallest, sk, sa = left, lk, la
                right = left + 1
                if right < items:
                    rk = heap[3 * right]
                    if rk < sk or (rk == sk and heap[3 * right + 1] < sa):
                        smallest = right
                if smallest == i:
                    break
                heap[3 * i], heap[3 * i + 1], heap[3 * i + 2] = heap[3 * smallest], heap[3 * smallest + 1], heap[3 * smallest + 2]
                i = smallest
            heap[3 * i], heap[3 * i + 1], heap[3 * i + 2] = key, age, index
        label = output[p]
        for k in range(len(offsets)):
            q = p + offsets[k]
            if not mask[q] or output[q] != 0:
                continue
            counter += 1
            output[q] = label
            heap = _push(heap, items, keys[q], counter, q)
            items += 1


@numba.njit(cache=True, nogil=True)
def _prepare(image, markers, mask):
    """The flooding's inputs, one pixel of padding a side (outside the mask), in one pass: each
    value as an int64 key in the same order (its float bits, negative ones flipped; -0.0 taken as
    0.0, so equal values give equal keys and the heap compares one integer where it compared
    floats), the padded mask, the markers inside the mask (scikit-image drops the others) and
    their flat indices in raster order. The last item: whether some value is NaN."""
    height, width = image.shape
    wide = width + 2
    keys = np.zeros((height + 2) * wide, np.int64)
    inside = np.zeros((height + 2) * wide, np.bool_)
    output = np.zeros((height + 2, wide), markers.dtype)
    seeds = np.empty(height * width, np.int64)
    n_seeds = 0
    scratch = np.empty(1, np.float64)
    bits = scratch.view(np.int64)
    flip = np.int64(0x7FFFFFFFFFFFFFFF)
    nan = False
    for i in range(height):
        for j in range(width):
            p = (i + 1) * wide + j + 1
            v = image[i, j]
            nan |= v != v
            scratch[0] = v + 0.0  # -0.0 becomes 0.0
            b = bits[0]
            keys[p] = b ^ flip if b < 0 else b
            if mask[i, j]:
                inside[p] = True
                if markers[i, j] != 0:
                    output[i + 1, j + 1] = markers[i, j]
                    seeds[n_seeds] = p
                    n_seeds += 1
    return keys, inside, output, seeds[:n_seeds], nan


def watershed(image: np.ndarray, markers: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``skimage.segmentation.watershed(image, markers, connectivity=np.ones((3, 3)), mask=mask)``
    as scikit-image 0.24 and earlier compute it (8-connected; markers any nonzero integers)."""
    markers = np.ascontiguousarray(markers)
    mask = np.ones(markers.shape, bool) if mask is None else np.ascontiguousarray(mask, bool)
    image = np.ascontiguousarray(image, np.float64)
    if image.ndim != 2 or image.shape != markers.shape or mask.shape != markers.shape:
        raise ValueError(f"watershed takes one 2-D shape: image {image.shape}, markers {markers.shape}, mask {mask.shape}")
    keys, inside, output, seeds, nan = _prepare(image, markers, mask)
    if nan:
        raise ValueError("watershed: the image has NaN values, which have no place in the flooding order")
    width = output.shape[1]
    offsets = np.array([-width, -1, 1, width, -width - 1, -width + 1, width - 1, width + 1], np.int64)
    _flood(keys, seeds, inside, offsets, output.ravel())  # ravel: a view, _flood writes the labels into it
    return output[1:-1, 1:-1]


@numba.njit(cache=True, nogil=True)
def _label_maximum(values, labels, top):
    out = np.zeros(top + 1, np.int64)
    for k in range(labels.size):
        lab = labels.flat[k]
        if 0 <= lab <= top and values.flat[k] > out[lab]:
            out[lab] = values.flat[k]
    return out


def label_maximum(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.maximum(values, labels, range(labels.max() + 1))`` for non-negative integer
    ``values`` (0 where a label is absent), without scipy's sort."""
    return _label_maximum(np.ascontiguousarray(values), np.ascontiguousarray(labels), int(labels.max(initial=0)))
