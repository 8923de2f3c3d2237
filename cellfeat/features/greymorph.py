"""Greyscale morphology kernels of MeasureGranularity (see :mod:`cellfeat.features.granularity`).

A reflect-mode grey erosion/dilation with any symmetric footprint (:func:`grey_filter`), the
erosion by the 4-neighbour cross (:func:`erode_cross`), and greyscale reconstruction by dilation
on a max-tree built once by union-find (:func:`max_tree`, :func:`reconstruct_max_tree`): two
linear passes per reconstruction; reconstruction only takes minima and maxima of existing values
and its result is unique, so it equals scikit-image's exactly. :func:`reconstructions_by_steps`
chains them into the granular spectrum's erode-then-reconstruct steps.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def _reflect(i, n):
    """scipy.ndimage's ``reflect`` (half-sample symmetric) index extension."""
    p = 2 * n
    i = i % p
    if i < 0:
        i += p
    return i if i < n else p - i - 1


@njit(cache=True, error_model="numpy")
def grey_filter(img, offsets, minimum):
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
def erode_cross(src, dst, h, w):
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
def _find_root(zpar, p):
    while zpar[p] != p:  # path halving
        zpar[p] = zpar[zpar[p]]
        p = zpar[p]
    return p


@njit(cache=True, error_model="numpy")
def max_tree(order, h, w):
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
def reconstruct_max_tree(order, parent, mask, seed, submax, out):
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
def reconstructions_by_steps(small, order, ng):
    """``ng`` times: erode by the cross, reconstruct under ``small``; returns ``(h * w, ng)``,
    the steps of a pixel side by side (what the per-object averages read together).

    The max-tree of ``small`` (``order``: its pixels sorted by value) is built once; each step
    is then two linear passes over it.
    """
    h, w = small.shape
    out = np.empty((h * w, ng))
    rec = np.empty(h * w)
    flat = small.ravel().copy()
    parent = max_tree(order, h, w)
    ero = flat.copy()
    nxt = np.empty(h * w)
    submax = np.empty(h * w)
    for step in range(ng):
        erode_cross(ero, nxt, h, w)
        ero, nxt = nxt, ero
        # the seed is ero itself: erosion never exceeds the image it erodes, so ero <= small
        reconstruct_max_tree(order, parent, flat, ero, submax, rec)
        for p in range(h * w):
            out[p, step] = rec[p]
    return out
