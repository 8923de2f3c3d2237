"""MeasureObjectNeighbors: how many objects touch each object, and how much of its outline.

Objects are their own neighbours (CellProfiler's usual set-up). Methods, as in CellProfiler:

* ``"Adjacent"`` (default): neighbours are objects within ``strel_disk(1)`` (4-connected)
  of a pixel of the object; key suffix ``_Adjacent``;
* an integer ``d`` ("Within a specified distance"): within ``strel_disk(d)``; suffix ``_{d}``;
* ``"Expanded"`` ("Expand until adjacent"): every background pixel is first given the label of
  its nearest object (``scipy.ndimage.distance_transform_edt`` indices), then ``"Adjacent"``;
  suffix ``_Expanded``. Here we follow CellProfiler, which also takes the neighbours' centres
  and outlines from the expanded labels; cp_measure 0.3 keeps the unexpanded labels as the
  neighbour set (its ``neighbor_labels = labels.copy()`` line is commented out), so it
  differs from both CellProfiler and us for this method only.

PercentTouching is the share of the object's outline pixels (8-connected outline, image edge
included: ``centrosome.outline``) lying within ``strel_disk(d + 0.5)`` of another object.
First/SecondClosestDistance are centre-to-centre distances to the nearest other objects and
AngleBetweenNeighbors the angle (degrees) at the centre between those two. As in cp_measure,
an image with a single object gets 0 for all of them. The Closest*ObjectNumber columns are not
emitted: they are object identifiers, not features, and change under relabelling.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage as ndi
from numba import njit

from cellfeat.features.primitives import as_labels, layout, n_objects

ADJACENT = "Adjacent"
EXPANDED = "Expanded"
_NAMES = ("NumberOfNeighbors", "PercentTouching", "FirstClosestDistance", "SecondClosestDistance", "AngleBetweenNeighbors")


def scale_name(method: str | int) -> str:
    if method in (ADJACENT, EXPANDED):
        return str(method)
    if isinstance(method, (int, np.integer)) and not isinstance(method, bool) and method >= 1:
        return str(int(method))
    raise ValueError(f"neighbour method must be 'Adjacent', 'Expanded' or a distance >= 1 in pixels, got {method!r}")


def keys(method: str | int = ADJACENT) -> tuple[str, ...]:
    scale = scale_name(method)
    return tuple(f"Neighbors_{name}_{scale}" for name in _NAMES)


def disk_offsets(radius: float) -> np.ndarray:
    """Offsets (dy, dx) of ``centrosome.cpmorphology.strel_disk(radius)``, centre excluded."""
    r = int(radius)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = (dy * dy + dx * dx <= radius * radius) & ((dy != 0) | (dx != 0))
    return np.column_stack((dy[keep], dx[keep])).astype(np.int64)


@njit(cache=True, error_model="numpy")
def _neighbors_kernel(labels, outline, offsets, rows, cols, near, touch):
    n = offsets.size - 1
    H, W = labels.shape
    count = np.zeros(n)
    touching = np.zeros(n)
    perim = np.zeros(n)
    cy = np.full(n, np.nan)
    cx = np.full(n, np.nan)
    stamp = np.zeros(n + 1, np.int64)
    for k in range(n):
        s, e = offsets[k], offsets[k + 1]
        if s == e:
            continue
        L = k + 1
        sy = 0.0
        sx = 0.0
        nb = 0
        for i in range(s, e):
            r = rows[i]
            c = cols[i]
            sy += r
            sx += c
            on_outline = outline[r, c] == L
            # with a 4-connected reach only outline pixels can see another object
            for t in range(near.shape[0] if (on_outline or near.shape[0] > 4) else 0):
                rr = r + near[t, 0]
                cc = c + near[t, 1]
                if 0 <= rr < H and 0 <= cc < W:
                    M = labels[rr, cc]
                    if M != 0 and M != L and stamp[M] != L:
                        stamp[M] = L
                        nb += 1
            if on_outline:
                perim[k] += 1
                for t in range(touch.shape[0]):
                    rr = r + touch[t, 0]
                    cc = c + touch[t, 1]
                    if 0 <= rr < H and 0 <= cc < W:
                        M = labels[rr, cc]
                        if M != 0 and M != L:
                            touching[k] += 1
                            break
        count[k] = nb
        cy[k] = sy / (e - s)
        cx[k] = sx / (e - s)
    present = 0
    for k in range(n):
        if offsets[k + 1] > offsets[k]:
            present += 1
    out = np.full((n, 5), np.nan)
    for k in range(n):
        if offsets[k + 1] == offsets[k]:
            continue
        out[k, 0] = count[k]
        out[k, 1] = touching[k] * 100 / perim[k]
        out[k, 2] = 0.0
        out[k, 3] = 0.0
        out[k, 4] = 0.0
        if present < 2:
            continue
        b1 = -1
        b2 = -1
        d1 = np.inf
        d2 = np.inf
        for j in range(n):
            if j == k or offsets[j + 1] == offsets[j]:
                continue
            d = math.sqrt((cy[k] - cy[j]) ** 2 + (cx[k] - cx[j]) ** 2)
            if d < d1:
                b2, d2 = b1, d1
                b1, d1 = j, d
            elif d < d2:
                b2, d2 = j, d
        v1x = cx[b1] - cx[k]
        v1y = cy[b1] - cy[k]
        out[k, 2] = math.sqrt(v1x**2 + v1y**2)
        if b2 >= 0:
            v2x = cx[b2] - cx[k]
            v2y = cy[b2] - cy[k]
            out[k, 3] = math.sqrt(v2x**2 + v2y**2)
            dot = (v1x * v2x + v1y * v2y) / math.sqrt((v1x**2 + v1y**2) * (v2x**2 + v2y**2))
            out[k, 4] = math.acos(dot) * 180.0 / np.pi if -1.0 <= dot <= 1.0 else np.nan
    return out


def expand_until_adjacent(labels: np.ndarray) -> np.ndarray:
    """Give every background pixel the label of its nearest object (CellProfiler's "Expand")."""
    if not labels.any():
        return labels
    i, j = ndi.distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
    return np.ascontiguousarray(labels[i, j])


def neighbors(labels: np.ndarray, pixels: None = None, *, method: str | int = ADJACENT) -> dict[str, np.ndarray]:
    """Neighbour features of the objects of ``labels`` (``pixels`` is unused)."""
    names = keys(method)
    labels = as_labels(labels)
    if method == EXPANDED:
        labels = expand_until_adjacent(labels)
    lay = layout(labels)
    if lay.n == 0:
        return {key: np.zeros(0, np.float64) for key in names}
    distance = 1 if method in (ADJACENT, EXPANDED) else int(method)
    table = _neighbors_kernel(
        lay.labels, lay.outline, lay.offsets, lay.rows, lay.cols, disk_offsets(distance), disk_offsets(distance + 0.5)
    )
    return {key: table[:, i] for i, key in enumerate(names)}


def _reference_neighbors(labels: np.ndarray, *, distance: int = 1) -> dict[str, np.ndarray]:
    """scipy reference (whole-image dilations per object) for the tests; labels contiguous 1..n."""
    from centrosome.cpmorphology import strel_disk
    from centrosome.outline import outline

    n = n_objects(labels)
    ctr = np.array(ndi.center_of_mass(np.ones(labels.shape), labels, np.arange(1, n + 1))).reshape(n, 2)
    outl = outline(labels)
    out = np.zeros((n, 5))
    for k in range(n):
        obj = labels == k + 1
        grown = ndi.binary_dilation(obj, strel_disk(distance))
        nb = np.unique(labels[grown])
        out[k, 0] = np.count_nonzero((nb != 0) & (nb != k + 1))
        others = ndi.binary_dilation((labels != 0) & ~obj, strel_disk(distance + 0.5))
        out[k, 1] = 100.0 * np.count_nonzero((outl == k + 1) & others) / np.count_nonzero(outl == k + 1)
        if n > 1:
            d = np.hypot(*(ctr - ctr[k]).T)
            d[k] = np.inf
            first, second = np.argsort(d, kind="stable")[:2]
            out[k, 2] = d[first]
            if n > 2:
                out[k, 3] = d[second]
                v1, v2 = ctr[first] - ctr[k], ctr[second] - ctr[k]
                out[k, 4] = np.degrees(np.arccos(v1 @ v2 / np.sqrt((v1 @ v1) * (v2 @ v2))))
    scale = ADJACENT if distance == 1 else distance
    return {key: out[:, i] for i, key in enumerate(keys(scale))}
