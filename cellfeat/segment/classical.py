"""Classical segmentation (no trained weights): nuclei by threshold + seeded watershed, cells
grown from them over a cytoplasm signal, as CellProfiler's IdentifyPrimaryObjects and
IdentifySecondaryObjects (propagation) do.

Nuclei (:func:`segment_nuclei`); each step was kept because it raised the average precision
on the hand-drawn DSB2018 image (``scripts/bench_segmentation.py``; naive Otsu + distance
watershed: AP@0.5 0.59, this: 0.80) or fixed a failure seen in the RxRx1 overlays:

1. Gaussian smoothing (``smoothing`` px) against shot noise.
2. Foreground: a Li (minimum cross-entropy) or Otsu threshold of the *log* intensities,
   times ``threshold_scale``. The log keeps a few very bright (mitotic) nuclei from pulling
   the threshold up and losing the dim ones. Optionally (``local_scale`` > 0) also above the
   local mean, for dense fields of uneven brightness (HepG2). Holes up to a nucleus are filled.
3. One seed per nucleus: local maxima of the negative Laplacian of Gaussian of the log image
   at ``seed_scale * diameter``, at least ``seed_distance * diameter`` apart. A dim nucleus
   beside a bright one has no intensity maximum of its own (intensity seeds lose it), but it
   has a blob response; the log makes the response depend on contrast, not brightness.
4. Marker-controlled watershed on the intensity gradient, with a ring just outside the
   foreground as the background marker, so that each outline sits on its nucleus' own edge
   whatever its brightness (a global threshold cuts dim nuclei small and bright ones large).
   The image is capped at ``edge_cap`` times the threshold first, so that the chromatin
   texture inside a bright mitotic nucleus cannot outbid its outer edge.
5. Each object keeps its pixels above ``edge_fraction`` of the way from the background level
   to its own peak, in the piece that holds its seed: this trims haze a region took on.
6. Shape declumping: a large, concave object whose distance transform has two maxima with a
   saddle at least ``split_depth`` px deep between them is split along the saddle (touching
   nuclei of similar brightness that got one seed).
7. Objects smaller than ``min_area_fraction`` of a disc of ``diameter`` are removed, and so
   are objects whose mean is less than ``min_snr`` noise standard deviations above the
   background (what a threshold finds in an image without nuclei).

Cells (:func:`segment_cells`): a cytoplasm signal (mean of per-channel percentile-normalised
channels), a threshold of its log, and a watershed from the nuclei over its gradient, limited
to ``max_distance`` px from a nucleus so that a cell cannot run over empty ground.

Intensity scale does not matter (8-bit/255, 16-bit/65535 or raw counts give the same objects
up to rounding); lengths are in pixels and scale with the expected nucleus ``diameter``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage import feature, filters, measure, morphology, segmentation

from cellfeat.segment.objects import (
    LABEL_DTYPE,
    Segmentation,
    empty,
    from_labels,
    relabel_sequential,
)
from cellfeat.segment.params import CLASSICAL_THRESHOLD_METHODS as THRESHOLD_METHODS
from cellfeat.segment.params import CellParams, NucleiParams  # noqa: F401  (re-exported)
from cellfeat.segment.watershed import watershed

# --------------------------------------------------------------------------- input checks


def check_plane(image: np.ndarray, name: str = "image") -> np.ndarray:
    """A 2-D finite image as float32, or ``ValueError`` saying what is wrong with it."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"{name} has shape {image.shape}; expected one 2-D grey plane (H, W)")
    if image.size == 0 or min(image.shape) < 3:
        raise ValueError(f"{name} has shape {image.shape}; it must be at least 3x3 pixels")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool) or np.iscomplexobj(image):
        raise ValueError(f"{name} has pixel type {image.dtype}; expected integers or floats")
    image = image.astype(np.float32, copy=False)
    bad = ~np.isfinite(image)
    if bad.any():
        raise ValueError(
            f"{name} has {int(bad.sum())} NaN or infinite pixel(s) of {image.size}; "
            f"segmentation needs finite intensities: replace them (e.g. np.nan_to_num) or fix the file"
        )
    return image


def _threshold(values: np.ndarray, method: str) -> float:
    """Automatic threshold of an image, computed on every other row and column (a histogram
    statistic: a quarter of the pixels gives the same value to a fraction of a grey level)."""
    sample = values[::2, ::2] if values.ndim == 2 and min(values.shape) >= 64 else values
    if method == "li":
        return float(filters.threshold_li(sample))
    if method == "otsu":
        return float(filters.threshold_otsu(sample))
    raise ValueError(f"unknown threshold method {method!r}; expected one of {THRESHOLD_METHODS}")


def _log(image: np.ndarray) -> tuple[np.ndarray, float]:
    """``(log(image + shift), shift)``: ``shift`` is tied to the image's own dark level, so the
    log is scale-invariant and defined for zero or negative pixels."""
    sample = image[::2, ::2]  # a quarter of the pixels is plenty for a percentile
    positive = sample[sample > 0]
    eps = float(np.percentile(positive, 1)) if positive.size else 1.0
    shift = eps - min(float(image.min()), 0.0)
    return np.log(image + shift), shift


# --------------------------------------------------------------------------- nuclei


def segment_nuclei(
    image: np.ndarray,
    *,
    diameter: float = NucleiParams.diameter,
    smoothing: float = NucleiParams.smoothing,
    threshold_method: str = NucleiParams.threshold_method,
    threshold_scale: float = NucleiParams.threshold_scale,
    seed_scale: float = NucleiParams.seed_scale,
    seed_distance: float = NucleiParams.seed_distance,
    split_depth: float = NucleiParams.split_depth,
    min_area_fraction: float = NucleiParams.min_area_fraction,
    min_snr: float = NucleiParams.min_snr,
    edge_fraction: float = NucleiParams.edge_fraction,
    local_scale: float = NucleiParams.local_scale,
    edge_cap: float = NucleiParams.edge_cap,
) -> np.ndarray:
    """Label the nuclei of one nuclear-stain plane: int32, 0 = background, 1..N.

    ``diameter`` is the typical nucleus diameter in pixels; the other lengths are fractions
    of it (see the module docstring for the steps). A constant image gives no nuclei.
    """
    image = check_plane(image, "nuclear channel")
    if diameter <= 2:
        raise ValueError(f"nucleus diameter must be > 2 px, got {diameter}")
    if threshold_method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {threshold_method!r}; expected one of {THRESHOLD_METHODS}")
    if float(image.max()) <= float(image.min()):
        return np.zeros(image.shape, LABEL_DTYPE)

    smooth = ndi.gaussian_filter(image, smoothing) if smoothing > 0 else image
    log_smooth, shift = _log(smooth)
    if float(log_smooth.max()) <= float(log_smooth.min()):
        return np.zeros(image.shape, LABEL_DTYPE)
    auto_cut = _threshold(log_smooth, threshold_method)
    cut = auto_cut + np.log(threshold_scale)
    min_area = max(int(min_area_fraction * np.pi * diameter**2 / 4), 1)
    foreground = log_smooth > cut
    if local_scale > 0:  # and above the local mean: separates nuclei in dense, uneven fields
        foreground &= smooth > ndi.gaussian_filter(smooth, local_scale * diameter, truncate=2.5)
    foreground = _fill_small_holes(foreground, int(np.pi * diameter**2 / 4))
    foreground = _remove_small(ndi.label(foreground)[0], min_area) > 0
    if not foreground.any():
        return np.zeros(image.shape, LABEL_DTYPE)

    # seeds: blob centres at the nucleus scale, one per connected foreground piece at least
    # Laplacian of the Gaussian, as a 3x3 Laplacian of the blurred image (cheaper than ndi.gaussian_laplace)
    blob = -ndi.laplace(ndi.gaussian_filter(log_smooth, seed_scale * diameter, truncate=3.0))
    peaks = _peaks(blob, foreground, max(1, int(round(seed_distance * diameter))))
    markers = np.zeros(image.shape, LABEL_DTYPE)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=LABEL_DTYPE)
    # background marker: a ring 2..4 px outside the foreground (the watershed runs inside it)
    background_marker = len(peaks) + 1
    near = ndi.binary_dilation(foreground, iterations=2)
    reach = ndi.binary_dilation(near, iterations=2)
    markers[reach & ~near] = background_marker

    # edges of the image capped at a few times the threshold: the outer edge of a bright
    # (mitotic) nucleus stays, its internal chromatin texture cannot outbid it
    cap = (float(np.exp(auto_cut)) - shift) * edge_cap if edge_cap > 0 else np.inf
    edges = filters.sobel(np.minimum(ndi.gaussian_filter(image, 1.5 * max(smoothing, 0.5)), cap))
    labels = watershed(edges, markers, reach)
    labels[labels == background_marker] = 0
    if edge_fraction > 0:
        labels = _clip_to_own_edge(labels, smooth, ~foreground, edge_fraction, peaks)
    labels = _remove_small(labels, min_area)
    if split_depth > 0:
        labels = _split_by_shape(labels, split_depth)
        labels = _remove_small(labels, min_area)
    labels = _drop_faint(labels, image, log_smooth <= auto_cut, min_snr)
    return relabel_sequential(labels)


def _peaks(surface: np.ndarray, mask: np.ndarray, min_distance: int) -> np.ndarray:
    """Local maxima of ``surface`` inside ``mask`` (``(n, 2)`` rows, cols), plus the maximum of
    every connected piece of ``mask`` that holds none, so that no piece goes without a seed."""
    peaks = feature.peak_local_max(
        surface, min_distance=min_distance, labels=mask.astype(np.uint8), exclude_border=False
    )
    pieces, n = ndi.label(mask)
    seeded = np.zeros(n + 1, bool)
    seeded[pieces[tuple(peaks.T)]] = True
    missing = np.flatnonzero(~seeded[1:]) + 1
    if missing.size:
        extra = np.array(ndi.maximum_position(surface, pieces, missing), dtype=peaks.dtype).reshape(-1, 2)
        peaks = np.concatenate([peaks, extra])
    return peaks


def _remove_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Labels with the objects of fewer than ``min_area`` pixels set to 0."""
    areas = np.bincount(labels.ravel())
    small = areas < min_area
    small[0] = False
    return np.where(small[labels], 0, labels) if small.any() else labels


def _fill_small_holes(mask: np.ndarray, max_area: int) -> np.ndarray:
    """Fill holes of ``mask`` up to ``max_area`` pixels (a hole never touches the image edge).

    Unlike filling every hole, this keeps a noise image's foreground, a network of specks,
    from closing into one solid sheet.
    """
    holes, n = ndi.label(~mask)
    if n == 0:
        return mask
    areas = np.bincount(holes.ravel(), minlength=n + 1)
    fill = areas <= max_area
    fill[0] = False
    fill[np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))] = False
    return mask | fill[holes]


def _clip_to_own_edge(
    labels: np.ndarray, smooth: np.ndarray, background: np.ndarray, fraction: float, seeds: np.ndarray
) -> np.ndarray:
    """Keep the pixels of each object above ``background + fraction * (peak - background)``,
    its own peak: a per-object threshold that trims what a watershed region took of the haze
    around a nucleus. Only the connected piece holding the object's seed (``seeds``: ``(n, 2)``,
    seed ``i`` of label ``i + 1``) is kept; an object whose seed falls below its cut is dropped."""
    n = int(labels.max())
    if n == 0 or not background.any():
        return labels
    level = float(np.median(smooth[background]))
    peak = np.zeros(n + 1, np.float64)
    peak[1:] = ndi.maximum(smooth, labels, np.arange(1, n + 1))
    clipped = np.where(smooth >= level + fraction * (peak[labels] - level), labels, 0)
    pieces = measure.label(clipped, connectivity=1)
    at_seed = tuple(seeds[:n].T)
    own = clipped[at_seed] == np.arange(1, len(seeds[:n]) + 1)
    keep = np.zeros(int(pieces.max()) + 1, bool)
    keep[pieces[at_seed][own]] = True
    keep[0] = False
    return np.where(keep[pieces], clipped, 0)


def _ellipse_fill(labels: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """Per object ``1..n``: its area over the area of the ellipse with its second moments."""
    rows, cols = np.indices(labels.shape, dtype=np.float64)
    flat = labels.ravel()
    n = len(areas)
    count = np.maximum(areas, 1).astype(np.float64)

    def mean(values):
        return np.bincount(flat, weights=values.ravel(), minlength=n) / count

    mr, mc = mean(rows), mean(cols)
    vr = mean(rows * rows) - mr**2 + 1 / 12  # + pixel's own variance
    vc = mean(cols * cols) - mc**2 + 1 / 12
    cov = mean(rows * cols) - mr * mc
    det = np.maximum(vr * vc - cov**2, 1e-12)
    ellipse = 4 * np.pi * np.sqrt(det)  # pi * (2 sd_major) * (2 sd_minor)
    return (areas / ellipse)[1:]


def _split_by_shape(labels: np.ndarray, depth: float, max_fill: float = 0.95) -> np.ndarray:
    """Split objects whose distance transform has several maxima ``depth`` px above their saddle.

    Candidates are objects larger than 1.25x the median object (a clump of two is about
    twice the median) that fill less than ``max_fill`` of their moment ellipse (a convex
    nucleus fills ~1, two touching discs ~0.92); each is tested on its own bounding box.
    """
    n = int(labels.max())
    if n == 0:
        return labels
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    present = areas[1:][areas[1:] > 0]
    candidates = np.flatnonzero((areas[1:] > 1.25 * np.median(present)) & (_ellipse_fill(labels, areas) < max_fill)) + 1
    out = labels
    next_label = n + 1
    slices = ndi.find_objects(labels)
    for k in candidates:
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in slices[k - 1])
        obj = labels[sl] == k
        dist = ndi.gaussian_filter(ndi.distance_transform_edt(obj), 1.0)
        if dist.max() < 2 * depth:
            continue
        tops, n_tops = ndi.label(morphology.h_maxima(dist, depth) & obj)
        if n_tops < 2:
            continue
        parts = segmentation.watershed(-dist, tops, mask=obj)
        if out is labels:
            out = labels.copy()
        view = out[sl]
        for part in range(2, n_tops + 1):
            view[parts == part] = next_label
            next_label += 1
    return out


def _drop_faint(labels: np.ndarray, image: np.ndarray, background: np.ndarray, min_snr: float) -> np.ndarray:
    """Remove objects whose mean is within ``min_snr`` noise SDs of the background level
    (the median of the ``background`` pixels: those below the unscaled automatic threshold).

    The noise SD comes from differences of neighbouring pixels, so that dense fields, where
    "background" pixels include dim nuclei, do not inflate it.
    """
    n = int(labels.max())
    if n == 0 or min_snr <= 0:
        return labels
    background = image[background]
    level = float(np.median(background)) if background.size >= 16 else float(np.percentile(image, 5))
    step = np.diff(image, axis=1).ravel() / np.sqrt(2.0)  # neighbour differences: noise, not structure
    noise = 1.4826 * float(np.median(np.abs(step - np.median(step))))
    if noise <= 0:
        return labels
    sums = np.bincount(labels.ravel(), weights=image.ravel(), minlength=n + 1)[1:]
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    means = np.divide(sums, areas, out=np.zeros(n), where=areas > 0)
    keep = np.concatenate([[False], (means - level) >= min_snr * noise])
    return np.where(keep[labels], labels, 0)


# --------------------------------------------------------------------------- cells


def cytoplasm_signal(site: np.ndarray, channels: Sequence[int], *, percentiles: tuple[float, float] = (1.0, 99.5)) -> np.ndarray:
    """Mean of the given channels of a ``(C, H, W)`` site, each stretched to [0, 1] between
    its own low/high percentiles first (so that a bright stain does not dominate)."""
    if site.ndim != 3:
        raise ValueError(f"expected a (C, H, W) site, got shape {site.shape}")
    bad = [c for c in channels if not 0 <= c < site.shape[0]]
    if bad or not channels:
        raise ValueError(
            f"cell channels {list(channels)} are not 0-based indices into a site of {site.shape[0]} channels"
        )
    out = np.zeros(site.shape[1:], np.float32)
    for c in channels:
        plane = check_plane(site[c], f"channel index {c}")
        lo, hi = np.percentile(plane[::2, ::2], percentiles)
        if hi > lo:
            out += np.clip((plane - lo) / (hi - lo), 0.0, 1.0)
    return out / len(channels)


def segment_cells(
    signal: np.ndarray,
    nuclei: np.ndarray,
    *,
    smoothing: float = CellParams.smoothing,
    threshold_method: str = CellParams.threshold_method,
    threshold_scale: float = CellParams.threshold_scale,
    max_distance: float = CellParams.max_distance,
    compactness: float = CellParams.compactness,
) -> np.ndarray:
    """Grow cells from ``nuclei`` over a cytoplasm ``signal``; cell ``k`` contains nucleus ``k``.

    Foreground is the signal above a threshold of its log (times ``threshold_scale``) and
    within ``max_distance`` px of a nucleus, plus the nuclei themselves. A watershed from
    the nuclei over the signal's gradient (``compactness`` > 0 pulls it towards a Voronoi
    partition) divides it; cells keep their nucleus' number.
    """
    signal = check_plane(signal, "cytoplasm signal")
    nuclei = np.asarray(nuclei)
    if nuclei.shape != signal.shape:
        raise ValueError(f"nuclei labels have shape {nuclei.shape}; the cytoplasm signal has {signal.shape}")
    if threshold_method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {threshold_method!r}; expected one of {THRESHOLD_METHODS}")
    nuclei = nuclei.astype(LABEL_DTYPE, copy=False)
    if not nuclei.any():
        return np.zeros(signal.shape, LABEL_DTYPE)
    smooth = ndi.gaussian_filter(signal, smoothing) if smoothing > 0 else signal
    if float(smooth.max()) > float(smooth.min()):
        log_smooth, _ = _log(smooth)
        cut = _threshold(log_smooth, threshold_method) + np.log(threshold_scale)
        foreground = log_smooth > cut
    else:  # no cytoplasm signal: cells are as far as max_distance reaches
        foreground = np.ones(signal.shape, bool)
    if max_distance > 0:  # distance to the nearest nucleus, on a 2x coarser grid (1-2 px error)
        coarse = ndi.distance_transform_edt(nuclei[::2, ::2] == 0) * 2.0
        near = np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)[: signal.shape[0], : signal.shape[1]]
        foreground &= near <= max_distance
    foreground |= nuclei > 0
    edges = filters.sobel(smooth)
    if compactness > 0:
        cells = segmentation.watershed(edges, nuclei, mask=foreground, compactness=compactness)
    else:
        cells = watershed(edges, nuclei, foreground)
    return cells.astype(LABEL_DTYPE, copy=False)


# --------------------------------------------------------------------------- a whole site


def segment_site(
    site: np.ndarray,
    *,
    nuclei_channel: int = 0,
    nuclei: NucleiParams = NucleiParams(),
    cells: CellParams = CellParams(),
    drop_border: bool = False,
) -> Segmentation:
    """Nuclei, cells and cytoplasm of a ``(C, H, W)`` site (see :class:`Segmentation`)."""
    site = np.asarray(site)
    if site.ndim != 3:
        raise ValueError(f"expected a (C, H, W) site, got shape {site.shape}")
    if not 0 <= nuclei_channel < site.shape[0]:
        raise ValueError(f"nuclei channel index {nuclei_channel} is outside the site's {site.shape[0]} channels")
    nuclear = segment_nuclei(site[nuclei_channel], **vars(nuclei))
    if not nuclear.any():
        return empty(site.shape[1:])
    cell_kw = {k: v for k, v in vars(cells).items() if k != "channels"}
    grown = segment_cells(cytoplasm_signal(site, cells.channels), nuclear, **cell_kw)
    result = from_labels(nuclear, grown)
    return result.drop_border() if drop_border else result
