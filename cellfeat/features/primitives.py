"""Shared numba primitives for the feature families: flatten a label image once, reduce per label.

A label image is turned into a *segment* layout by :func:`flatten_labels`: the flat (raster)
indices of all foreground pixels, sorted by label with a counting sort (stable, so pixels of
one label stay in raster order), and ``offsets`` such that the pixels of label ``k + 1`` are
``order[offsets[k]:offsets[k + 1]]``. Every per-label kernel then walks one contiguous slice;
no kernel scans the whole image once per object. Row and column of a flat index ``p`` are
``p // width`` and ``p % width``.

All kernels are ``@njit(cache=True)`` and serial: parallelism belongs to the batch layer
(sites, plates). Each kernel has a plain numpy/scipy/scikit-image reference in the tests.

:func:`layout` wraps this (plus rows/columns and the object boundaries) and keeps the last few
layouts in an :class:`ArrayCache`, so that a family called once per channel flattens each
compartment's labels once.

Conventions shared by the families:

* ``n = labels.max()``; arrays have length ``n``; element ``k`` belongs to label ``k + 1``;
* a label with no pixels has ``offsets[k] == offsets[k + 1]`` and gets NaN features;
* coordinates are (row, column) = (y, x), pixel centres at integers, as in CellProfiler.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
from numba import njit


def as_labels(labels: np.ndarray) -> np.ndarray:
    """Validate a 2-D integer label image and return it C-contiguous as int32 (no copy if it is)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D label image, got shape {labels.shape}")
    if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers (0 = background), got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be >= 0 (0 = background); got negative values")
    if labels.size and labels.max() > np.iinfo(np.int32).max:
        raise ValueError(f"labels up to {labels.max()} do not fit int32")
    return np.ascontiguousarray(labels, dtype=np.int32)


def n_objects(labels: np.ndarray) -> int:
    return int(labels.max()) if labels.size else 0


@njit(cache=True)
def flatten_labels(labels, n):
    """Foreground pixels grouped by label: ``(order, offsets)``.

    ``order`` holds flat indices (int64), label by label, raster order within a label;
    ``offsets`` (length ``n + 1``) delimits label ``k + 1`` as ``order[offsets[k]:offsets[k+1]]``.
    Labels above ``n`` are ignored. One counting pass and one scatter pass.
    """
    flat = labels.ravel()
    counts = np.zeros(n + 1, np.int64)
    for p in range(flat.size):
        v = flat[p]
        if v > 0 and v <= n:
            counts[v] += 1
    offsets = np.zeros(n + 1, np.int64)
    for k in range(n):
        offsets[k + 1] = offsets[k] + counts[k + 1]
    cursor = offsets[:n].copy()
    order = np.empty(offsets[n], np.int64)
    for p in range(flat.size):
        v = flat[p]
        if v > 0 and v <= n:
            order[cursor[v - 1]] = p
            cursor[v - 1] += 1
    return order, offsets


@njit(cache=True)
def flatten_coords(labels, n):
    """:func:`flatten_labels` plus each pixel's row and column (int64), without divisions.

    Returns ``(order, offsets, rows, cols)``; ``rows[i], cols[i]`` is pixel ``order[i]``.
    """
    H, W = labels.shape
    counts = np.zeros(n + 1, np.int64)
    for r in range(H):
        for c in range(W):
            v = labels[r, c]
            if v > 0 and v <= n:
                counts[v] += 1
    offsets = np.zeros(n + 1, np.int64)
    for k in range(n):
        offsets[k + 1] = offsets[k] + counts[k + 1]
    cursor = offsets[:n].copy()
    order = np.empty(offsets[n], np.int64)
    rows = np.empty(offsets[n], np.int64)
    cols = np.empty(offsets[n], np.int64)
    for r in range(H):
        for c in range(W):
            v = labels[r, c]
            if v > 0 and v <= n:
                i = cursor[v - 1]
                order[i] = r * W + c
                rows[i] = r
                cols[i] = c
                cursor[v - 1] = i + 1
    return order, offsets, rows, cols


@njit(cache=True)
def coord_bboxes(offsets, rows, cols):
    """Per-label bounding boxes ``(rmin, rmax, cmin, cmax)`` (inclusive; -1 for empty labels)
    from the ``rows``/``cols`` of :func:`flatten_coords`."""
    n = offsets.size - 1
    rmin = np.full(n, -1, np.int64)
    rmax = np.full(n, -1, np.int64)
    cmin = np.full(n, -1, np.int64)
    cmax = np.full(n, -1, np.int64)
    for k in range(n):
        s, e = offsets[k], offsets[k + 1]
        if s == e:
            continue
        rmin[k] = rows[s]
        rmax[k] = rows[e - 1]
        c0 = cols[s]
        c1 = cols[s]
        for i in range(s + 1, e):
            c = cols[i]
            if c < c0:
                c0 = c
            if c > c1:
                c1 = c
        cmin[k] = c0
        cmax[k] = c1
    return rmin, rmax, cmin, cmax


@njit(cache=True)
def crop_mask(labels, order, s, e, label, r0, c0, h, w, pad):
    """Binary mask (uint8) of one label's pixels in its bounding box, with ``pad`` zeros around.

    ``(r0, c0)`` is the box origin, ``h x w`` its size; the result is ``(h + 2 pad, w + 2 pad)``.
    Other labels inside the box are background, as in ``regionprops``' ``image``.
    """
    width = labels.shape[1]
    out = np.zeros((h + 2 * pad, w + 2 * pad), np.uint8)
    for i in range(s, e):
        p = order[i]
        out[p // width - r0 + pad, p % width - c0 + pad] = 1
    return out


@njit(cache=True)
def inner_boundary(labels):
    """Labelled inner boundary (0 elsewhere): a pixel whose 4-neighbour has another label.

    Out-of-image neighbours are ignored. Same as
    ``skimage.segmentation.find_boundaries(labels, mode="inner") * labels``.
    """
    H, W = labels.shape
    out = np.zeros((H, W), labels.dtype)
    for r in range(H):
        for c in range(W):
            v = labels[r, c]
            if v <= 0:
                continue
            if (
                (r > 0 and labels[r - 1, c] != v)
                or (r < H - 1 and labels[r + 1, c] != v)
                or (c > 0 and labels[r, c - 1] != v)
                or (c < W - 1 and labels[r, c + 1] != v)
            ):
                out[r, c] = v
    return out


@njit(cache=True)
def outline8(labels):
    """CellProfiler's object outline (``centrosome.outline.outline``), labelled.

    A foreground pixel is on the outline if any 8-neighbour has another value, or if it lies on
    the image edge.
    """
    H, W = labels.shape
    out = np.zeros((H, W), labels.dtype)
    for r in range(H):
        for c in range(W):
            v = labels[r, c]
            if v <= 0:
                continue
            if r == 0 or c == 0 or r == H - 1 or c == W - 1:
                out[r, c] = v
                continue
            diff = False
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if labels[r + dr, c + dc] != v:
                        diff = True
            if diff:
                out[r, c] = v
    return out


@njit(cache=True)
def _before(a, b):
    """``a < b`` with NaN after every number (numpy's sort order)."""
    return a < b or (b != b and a == a)


@njit(cache=True)
def sort_pairs(keys, idx, carry):
    """Sort ``keys`` (1-D) ascending in place, NaN last; with ``carry``, apply the same moves to
    ``idx``. Quicksort (median of three, explicit stack) with insertion sort under 16 elements.

    Our own instead of numba's ``ndarray.sort``/``np.argsort`` inside cached kernels: numba
    generates those per variant under one qualified name, and a process that loads cached
    kernels compiled in different processes can link one module's sort to another's argsort
    (numba's process-local function ids collide; numba issues #5128, #10486), silently wrong.
    """
    stack = np.empty(2 * 64, np.int64)
    top = 0
    lo = 0
    hi = keys.size - 1
    while True:
        while hi - lo >= 16:
            i = _partition(keys, idx, carry, lo, hi)
            if i - lo < hi - i:  # the larger part waits on the stack: depth stays O(log n)
                stack[top] = i + 1
                stack[top + 1] = hi
                hi = i - 1
            else:
                stack[top] = lo
                stack[top + 1] = i - 1
                lo = i + 1
            top += 2
        _insertion_sort(keys, idx, carry, lo, hi)
        if top == 0:
            return
        top -= 2
        lo = stack[top]
        hi = stack[top + 1]


@njit(cache=True)
def select_inplace(a, k):
    """The ``k``-th smallest element of a 1-D array (0-based; NaN last), moving the ``k``
    smallest before it (in no order) and the rest after it: quickselect on the partition of
    :func:`sort_pairs`. Our own for the reason given there."""
    lo = 0
    hi = a.size - 1
    while hi - lo >= 16:
        i = _partition(a, a[:0], False, lo, hi)
        if i == k:
            return a[k]
        if k < i:
            hi = i - 1
        else:
            lo = i + 1
    _insertion_sort(a, a[:0], False, lo, hi)
    return a[k]


@njit(cache=True)
def _partition(keys, idx, carry, lo, hi):
    """Partition ``keys[lo:hi + 1]`` (at least 3 elements) around the median of its first, middle
    and last keys; returns the pivot's final position (smaller keys before it, larger after)."""
    mid = (lo + hi) // 2  # median of three into keys[mid], then to hi - 1 as the pivot
    if _before(keys[mid], keys[lo]):
        _swap(keys, idx, carry, mid, lo)
    if _before(keys[hi], keys[mid]):
        _swap(keys, idx, carry, hi, mid)
        if _before(keys[mid], keys[lo]):
            _swap(keys, idx, carry, mid, lo)
    _swap(keys, idx, carry, mid, hi - 1)
    pivot = keys[hi - 1]
    i = lo
    j = hi - 1
    while True:
        i += 1
        while _before(keys[i], pivot):
            i += 1
        j -= 1
        while _before(pivot, keys[j]):
            j -= 1
        if i >= j:
            break
        _swap(keys, idx, carry, i, j)
    _swap(keys, idx, carry, i, hi - 1)
    return i


@njit(cache=True)
def _insertion_sort(keys, idx, carry, lo, hi):
    for i in range(lo + 1, hi + 1):
        k = keys[i]
        t = idx[i] if carry else 0
        j = i - 1
        while j >= lo and _before(k, keys[j]):
            keys[j + 1] = keys[j]
            if carry:
                idx[j + 1] = idx[j]
            j -= 1
        keys[j + 1] = k
        if carry:
            idx[j + 1] = t


@njit(cache=True)
def _swap(keys, idx, carry, i, j):
    keys[i], keys[j] = keys[j], keys[i]
    if carry:
        idx[i], idx[j] = idx[j], idx[i]


@njit(cache=True)
def sort_inplace(a):
    """Sort a 1-D array ascending in place (NaN last); see :func:`sort_pairs`."""
    sort_pairs(a, a[:0], False)


@njit(cache=True)
def argsort(a):
    """Indices that sort a 1-D array ascending (NaN last; ties in no particular order)."""
    keys = a.copy()
    idx = np.arange(a.size)
    sort_pairs(keys, idx, True)
    return idx


@njit(cache=True)
def median_inplace(a):
    """``numpy.median`` of a 1-D array without NaN (the mean of the two middle values for an even
    count), reordering it: :func:`select_inplace`, not numba's ``np.median``."""
    n = a.size
    upper = select_inplace(a, n // 2)
    if n % 2:
        return upper
    lower = a[0]
    for i in range(1, n // 2):  # the largest of the n // 2 smallest
        lower = max(lower, a[i])
    return (lower + upper) / 2


@njit(cache=True)
def sorted_quantile(sorted_values, n, frac, legacy):
    """Linear interpolation in a sorted run of ``n`` values.

    ``legacy=False``: position ``(n - 1) * frac`` (``numpy.percentile``'s "linear");
    ``legacy=True``: position ``n * frac`` (CellProfiler's original convention). The upper
    neighbour is clamped at the last element, as in cp_measure.
    """
    pos = n * frac if legacy else (n - 1) * frac
    lo = int(pos)
    if lo > n - 1:
        lo = n - 1
    hi = lo + 1
    if hi > n - 1:
        hi = n - 1
    f = pos - lo
    return sorted_values[lo] * (1.0 - f) + sorted_values[hi] * f


@njit(cache=True)
def segment_sum(values, offsets):
    """Per-segment sum of ``values`` laid out in segment order (see :func:`gather`)."""
    n = offsets.size - 1
    out = np.zeros(n, np.float64)
    for k in range(n):
        acc = 0.0
        for i in range(offsets[k], offsets[k + 1]):
            acc += values[i]
        out[k] = acc
    return out


@njit(cache=True)
def gather(image, order):
    """``image.ravel()[order]`` as float64 (the pixel values in segment order)."""
    flat = image.ravel()
    out = np.empty(order.size, np.float64)
    for i in range(order.size):
        out[i] = flat[order[i]]
    return out


def segments(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """``(order, offsets, n)`` for a validated label image (see :func:`flatten_labels`)."""
    labels = as_labels(labels)
    n = n_objects(labels)
    order, offsets = flatten_labels(labels, n)
    return order, offsets, n


@dataclass
class Layout:
    """A label image's segment layout (:func:`flatten_coords`), boundaries computed on demand."""

    labels: np.ndarray  # validated int32, C-contiguous
    n: int
    order: np.ndarray
    offsets: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    _edge: np.ndarray | None = field(default=None, repr=False)
    _outline: np.ndarray | None = field(default=None, repr=False)

    @property
    def edge(self) -> np.ndarray:
        """:func:`inner_boundary` of the labels."""
        if self._edge is None:
            self._edge = inner_boundary(self.labels)
        return self._edge

    @property
    def outline(self) -> np.ndarray:
        """:func:`outline8` of the labels."""
        if self._outline is None:
            self._outline = outline8(self.labels)
        return self._outline


@njit(cache=True)
def _same_values(a, b):
    """``a == b`` everywhere (1-D, same size), stopping at the first difference; strided probes
    first so that a different array is usually rejected after a few reads. NaN never matches."""
    n = a.size
    step = 4099
    for start in range(0, min(step, n), 997):
        for i in range(start, n, step):
            if a[i] != b[i]:
                return False
    for i in range(n):
        if a[i] != b[i]:
            return False
    return True


class ArrayCache:
    """A few values computed from arrays, found again by the arrays' *contents*.

    Families are called once per channel (and compartment) with the same label image or plane;
    what was derived from it (segment layout, grey levels) is kept with a private copy of the
    array and reused only if a new array equals that copy. A strided sample rejects most
    mismatches before the full comparison, which costs a small fraction of recomputing, so
    in-place edits of the caller's arrays are safe. Least recently used entries go first.
    """

    def __init__(self, size: int):
        self.size = size
        self._entries: list[tuple[np.ndarray, object]] = []
        self._lock = threading.Lock()

    def get(self, array: np.ndarray):
        with self._lock:
            entries = list(self._entries)
        flat = array.reshape(-1)
        for i, (key, value) in enumerate(entries):
            if key.shape != array.shape or key.dtype != array.dtype:
                continue
            if _same_values(key.reshape(-1), flat):
                with self._lock:
                    if i < len(self._entries) and self._entries[i][0] is key:
                        self._entries.insert(0, self._entries.pop(i))
                return value
        return None

    def put(self, array: np.ndarray, value, *, copy: bool = True) -> None:
        """Keep ``value`` for ``array`` (copied unless ``copy=False`` hands over a private one)."""
        with self._lock:
            self._entries.insert(0, (array.copy() if copy else array, value))
            del self._entries[self.size :]


_LAYOUTS = ArrayCache(4)  # Nuclei, Cells, Cytoplasm (+1)


def layout(labels: np.ndarray) -> Layout:
    """The :class:`Layout` of ``labels``, reused while an equal label image comes back."""
    if isinstance(labels, np.ndarray) and labels.dtype == np.int32 and labels.ndim == 2:
        cached = _LAYOUTS.get(labels)  # keys were validated when they went in
        if cached is not None:
            return cached
    labels = as_labels(labels)
    n = n_objects(labels)
    order, offsets, rows, cols = flatten_coords(labels, n)
    private = labels.copy()  # the cache key and the layout's labels: never the caller's array
    result = Layout(private, n, order, offsets, rows, cols)
    _LAYOUTS.put(private, result, copy=False)
    return result
