"""CellProfiler's Propagate (Jones, Carpenter & Golland 2005), as centrosome computes it.

Labels grow from their seeds over an image, 8-connected, in order of the accumulated distance
``d(p, q) = sqrt(D**2 + w**2 * |p - q|_1)``, where ``D`` sums the absolute differences of the
3x3 neighbourhoods of ``p`` and ``q`` (clamped at the image's edges) and ``w`` weighs space
against intensity (IdentifySecondaryObjects' regularization factor). centrosome's heap orders
pixels by (distance without its lowest bit, label, row, column), but starts from its seeds as
given, not heapified; the heap here repeats its every operation, so pixels are claimed in the
same order and ties go to the same label.
"""

from __future__ import annotations

import numba
import numpy as np

_DI = np.array((-1, -1, -1, 0, 0, 1, 1, 1), np.int64)
_DJ = np.array((-1, 0, 1, -1, 1, -1, 0, 1), np.int64)


@numba.njit(cache=True, nogil=True, inline="always")
def _distance(padded, i1, j1, i2, j2, weight):
    """``d(p, q)`` on the image padded by its edge pixels (``padded[i + 1, j + 1]`` is pixel
    ``(i, j)``, the clamping of centrosome's reads done once); its sums in centrosome's order."""
    diff = 0.0
    for di in range(3):
        for dj in range(3):
            v1 = padded[i1 + di, j1 + dj]
            v2 = padded[i2 + di, j2 + dj]
            diff += v1 - v2 if v1 > v2 else v2 - v1
    manhattan = float(abs(i1 - i2) + abs(j1 - j2))
    return np.sqrt(diff * diff + manhattan * weight * weight)


@numba.njit(cache=True, nogil=True)
def _propagate(padded, seeds_i, seeds_j, seeds_label, mask, labels, distances, weight):
    m, n = mask.shape
    # centrosome's heap, operation for operation: items (distance key, label, row, column) held as
    # two int64s, the key and label << 40 | row << 20 | column. Its seeds enter in row-major
    # order WITHOUT being heapified (they all have key 0, so the array is not in heap order by
    # label), and its pops and pushes sift as below; the order pixels are claimed in, and so
    # which label wins a tie, depends on exactly this sequence.
    size = len(seeds_i)
    heap = np.zeros(2 * max(size, 1000), np.int64)  # item k: heap[2k] its key, heap[2k + 1] the rest
    for k in range(size):
        heap[2 * k + 1] = (np.int64(seeds_label[k]) << 40) | (np.int64(seeds_i[k]) << 20) | np.int64(seeds_j[k])
    scratch = np.empty(1, np.float64)  # a distance >= 0 as centrosome keys it: its bits without the lowest one
    bits = scratch.view(np.int64)
    low = (np.int64(1) << 20) - 1
    while size > 0:
        item = heap[1]
        size -= 1
        if size > 0:  # pop: the last item to the root, sifted down (moved, not swapped: same places)
            key, pk = heap[2 * size], heap[2 * size + 1]
            i = 0
            while True:
                left = 2 * i + 1
                if left >= size:
                    break
                smallest = i
                skey, spk = key, pk
                if heap[2 * left] < skey or (heap[2 * left] == skey and heap[2 * left + 1] < spk):
                    smallest = left
                    skey, spk = heap[2 * left], heap[2 * left + 1]
                right = left + 1
                if right < size and (heap[2 * right] < skey or (heap[2 * right] == skey and heap[2 * right + 1] < spk)):
                    smallest = right
                if smallest == i:
                    break
                heap[2 * i], heap[2 * i + 1] = heap[2 * smallest], heap[2 * smallest + 1]
                i = smallest
            heap[2 * i], heap[2 * i + 1] = key, pk
        label, i1, j1 = item >> 40, (item >> 20) & low, item & low
        if labels[i1, j1] != 0:
            continue
        labels[i1, j1] = label
        d0 = distances[i1, j1]
        for k in range(8):
            i2, j2 = i1 + _DI[k], j1 + _DJ[k]
            if i2 < 0 or i2 >= m or j2 < 0 or j2 >= n or labels[i2, j2] > 0 or not mask[i2, j2]:
                continue
            d = _distance(padded, i1, j1, i2, j2, weight) + d0
            if distances[i2, j2] == -1 or distances[i2, j2] > d:
                distances[i2, j2] = d
                scratch[0] = d
                if 2 * size == len(heap):
                    heap = np.concatenate((heap, np.zeros(2 * size, np.int64)))
                key, pk = bits[0] >> 1, (label << 40) | (i2 << 20) | j2
                child = size
                size += 1
                while child > 0:  # push: sifted up (moved, not swapped)
                    parent = (child + 1) // 2 - 1
                    if not (key < heap[2 * parent] or (key == heap[2 * parent] and pk < heap[2 * parent + 1])):
                        break
                    heap[2 * child], heap[2 * child + 1] = heap[2 * parent], heap[2 * parent + 1]
                    child = parent
                heap[2 * child], heap[2 * child + 1] = key, pk


def propagate(image: np.ndarray, labels: np.ndarray, mask: np.ndarray, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels propagated from ``labels`` (seeds > 0) over ``mask``; (labels, distances).
    Seed pixels keep their labels (also outside the mask); unreached pixels are 0, distance -1."""
    image = np.ascontiguousarray(image, np.float64)
    if image.shape != labels.shape or image.shape != mask.shape:
        raise ValueError(f"image {image.shape}, labels {labels.shape} and mask {mask.shape} must have one shape")
    if max(image.shape) >= 1 << 20 or labels.max(initial=0) >= 1 << 23:
        raise ValueError(f"propagate takes images under 2**20 px a side and labels under 2**23, got {image.shape}, {labels.max()}")
    out = np.zeros(labels.shape, np.int32)
    distances = -np.ones(labels.shape, np.float64)
    distances[labels > 0] = 0
    seeds_i, seeds_j = np.nonzero((labels != 0) & mask)
    _propagate(np.pad(image, 1, mode="edge"), seeds_i.astype(np.int64), seeds_j.astype(np.int64), labels[seeds_i, seeds_j].astype(np.int64),
               np.ascontiguousarray(mask, np.bool_), out, distances, float(weight))  # fmt: skip
    out[labels > 0] = labels[labels > 0]
    return out, distances
