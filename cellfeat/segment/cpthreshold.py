"""CellProfiler's thresholds (the Threshold settings of IdentifyPrimaryObjects and
IdentifySecondaryObjects), as ``cellprofiler_library`` computes them.

Global: Minimum Cross-Entropy, Otsu with two or three classes (the middle class to the fore- or
background), Robust Background (mean, median or binned mode; standard or median absolute
deviation; outlier fractions; number of deviations); smoothing scale, correction factor, bounds,
log transform. Adaptive: the same methods (and Sauvola) in blocks of about ``window_size``
pixels, blended by a bicubic spline, held within 0.7-1.5 times the global threshold.

The library's behaviour is kept where it is surprising, so that the same image and settings give
the same objects: an adaptive block keeps only its non-zero pixels; the global threshold that
bounds an adaptive one is computed on the already log-transformed image (when log transform is
on) and, for Robust Background, with the method's default settings rather than the module's.
"""

from __future__ import annotations

import dataclasses
import functools

import numba
import numpy as np
import scipy.ndimage as ndi
from skimage import filters

from cellfeat.errors import ConfigError
from cellfeat.segment.params import (  # noqa: F401  (re-exported)
    AVERAGING,
    SCOPES,
    THRESHOLD_METHODS,
    VARIANCE,
    ThresholdSettings,
)

GLOBAL_LIMITS = (0.7, 1.5)  # an adaptive threshold stays within these multiples of the global one

def _log_transform(image: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """centrosome's ``threshold.log_transform``: log of the image floored at 1/256 of its range
    above its minimum, stretched to 0-1; returns the conversion for :func:`_inverse_log`."""
    low, high = float(image.min()), float(image.max())
    floor = low + (high - low) / 256.0 + np.finfo(image.dtype).eps
    logged = np.log(np.maximum(image, floor))
    log_min, log_max = float(logged.min()), float(logged.max())
    if log_min == log_max:
        stretched = np.zeros_like(logged) if log_min < 0 else (np.ones_like(logged) if log_min > 1 else logged)
    else:
        stretched = (logged - log_min) / (log_max - log_min)
    return stretched, (log_min, log_max)


def _inverse_log(value, conversion: tuple[float, float]):
    log_min, log_max = conversion
    return np.exp(value * (log_max - log_min) + log_min)


def _grid_histogram(values: np.ndarray) -> tuple[np.ndarray, int] | None:
    """``(counts, scale)``: how many values are each grey level ``k / scale``, where every value
    is exactly k / 255 or k / 65535 (the images CellProfiler reads); None where they are not."""
    flat = np.ascontiguousarray(values, np.float64).ravel()
    for scale in (255, 65535):
        counts = _grid_counts(flat, scale)
        if counts.size:
            return counts, scale
    return None


@numba.njit(cache=True, nogil=True)
def _grid_counts(flat, scale):
    """How many values are each level ``k / scale``, where every value is one (else empty)."""
    counts = np.zeros(scale + 1, np.int64)
    for v in flat:
        code = np.rint(v * scale)
        if not (code >= 0 and code <= scale and code / scale == v):
            return np.zeros(0, np.int64)
        counts[np.int64(code)] += 1
    return counts


def _levels(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)``, by counting where every value is a grey level (see
    :func:`_grid_histogram`), else by sorting."""
    grid = _grid_histogram(values)
    if grid is None:
        return np.unique(np.ascontiguousarray(values, np.float64).ravel())
    counts, scale = grid
    return np.flatnonzero(counts) / float(scale)


def _tolerance_of(levels: np.ndarray) -> float:
    """The tolerance CellProfiler gives scikit-image's Li (Minimum Cross-Entropy): half the
    smallest step between the (sorted, distinct) grey levels, at least half a 16-bit step."""
    return max(float(np.min(np.diff(levels))) / 2, 0.5 / 65536)


def _li_tolerance(values: np.ndarray) -> float:
    """:func:`_tolerance_of` the values' distinct levels."""
    return _tolerance_of(_levels(values))


def binned_mode(values: np.ndarray) -> float:
    """centrosome's ``threshold.binned_mode``: the centre (as a percentile) of the fullest of
    ``ceil(sqrt(n))`` equal bins."""
    a = np.asarray(values).flatten()
    low, high = np.min(a), np.max(a)
    bins = np.ceil(np.sqrt(len(a)))
    index = np.argmax(np.bincount(((a - low) / (high - low) * bins).astype(int)))
    return np.percentile(a, 100 * float(index + 0.5) / bins)


def _robust_background(values: np.ndarray, settings: ThresholdSettings) -> float:
    """CellProfiler's Robust Background: the average of the pixels left after trimming the
    outlier fractions off both ends, plus ``deviations`` times their spread."""
    flat = np.sort(values.ravel())
    if len(flat) < 3:
        return 0.0
    if flat[0] == flat[-1]:
        return float(flat[0])
    low = round(len(flat) * settings.lower_outlier_fraction)
    high = len(flat) - round(len(flat) * settings.upper_outlier_fraction)
    kept = flat if low == 0 else flat[low:high]
    average = {"mean": np.mean, "median": np.median, "mode": binned_mode}[settings.averaging](kept)
    if settings.variance == "standard_deviation":
        spread = np.std(kept)
    else:
        a = np.asarray(kept, dtype=float).flatten()
        spread = np.median(np.abs(a - np.median(a)))
    return float(average + spread * settings.deviations)


def global_threshold(image: np.ndarray, settings: ThresholdSettings, mask: np.ndarray | None = None) -> float:
    """The module's global threshold of ``image`` (before smoothing: CellProfiler smooths only
    the image it compares with the threshold). Sauvola's global stand-in is Minimum Cross-Entropy,
    as in CellProfiler."""
    conversion = None
    if settings.log_transform:
        image, conversion = _log_transform(image)
    values = image[mask] if mask is not None else image
    if values.size == 0:
        threshold = 0.0
    elif np.all(values == values.ravel()[0]):
        threshold = float(values.ravel()[0])
    elif settings.method in ("minimum_cross_entropy", "sauvola"):
        threshold = _li_on_levels(values)
        if threshold is None:
            threshold = float(filters.threshold_li(values, tolerance=_li_tolerance(values)))
    elif settings.method == "robust_background":
        threshold = _robust_background(values, settings)
    elif settings.classes == 2:
        threshold = float(filters.threshold_otsu(values))
    else:
        threshold = float(filters.threshold_multiotsu(values, nbins=128)[0 if settings.middle_to_foreground else 1])
    if conversion is not None:
        threshold = float(_inverse_log(threshold, conversion))
    threshold *= settings.correction_factor
    return min(max(threshold, settings.lower_bound), settings.upper_bound)


def _li_on_levels(values: np.ndarray, tolerance: float | None = None) -> float | None:
    """scikit-image's ``threshold_li`` (its iteration for float images) where every value is a
    grey level ``k / 255`` or ``k / 65535``: its means over the pixels above and below each
    estimate taken from a histogram of the levels (one pass over the pixels, then the levels
    alone) instead of over the pixels; equal up to the rounding of the sums (numpy's pairwise
    summation vs sums of count x level). ``tolerance``: by default :func:`_li_tolerance`'s, from
    the same histogram. None where the values are not such levels."""
    grid = _grid_histogram(values)
    if grid is None:
        return None
    counts, scale = grid
    if tolerance is None:
        tolerance = _tolerance_of(np.flatnonzero(counts) / float(scale))
    return float(_li_iterate(counts, float(scale), float(tolerance)))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _li_iterate(counts, scale, tolerance):
    levels = np.flatnonzero(counts)
    low = levels[0] / scale
    shifted = np.empty(levels.size)  # the image less its minimum, as scikit-image shifts it
    weight = np.empty(levels.size)
    total = 0.0
    n = 0.0
    for i in range(levels.size):
        shifted[i] = levels[i] / scale - low
        weight[i] = counts[levels[i]]
        total += weight[i] * shifted[i]
        n += weight[i]
    t_next = total / n
    t_curr = -2 * tolerance
    while abs(t_next - t_curr) > tolerance:
        t_curr = t_next
        fore = 0.0
        n_fore = 0.0
        back = 0.0
        n_back = 0.0
        for i in range(levels.size):
            if shifted[i] > t_curr:
                fore += weight[i] * shifted[i]
                n_fore += weight[i]
            else:
                back += weight[i] * shifted[i]
                n_back += weight[i]
        mean_fore = fore / n_fore
        mean_back = back / n_back
        if mean_back == 0.0:
            break
        t_next = (mean_back - mean_fore) / (np.log(mean_back) - np.log(mean_fore))
    return t_next + low


def _block_threshold(block: np.ndarray, settings: ThresholdSettings, tolerance: float) -> float:
    """One adaptive block's threshold (the library keeps only the block's non-zero pixels)."""
    block = block[block != 0]
    if len(block) == 0:
        return 0.0
    if np.all(block == block[0]):
        return float(block[0])
    if settings.method == "minimum_cross_entropy":
        threshold = _li_on_levels(block, tolerance)
        return float(filters.threshold_li(block, tolerance=tolerance)) if threshold is None else threshold
    if settings.method == "robust_background":
        return _robust_background(block, settings)
    if settings.classes == 2 or len(np.unique(block)) < 3:
        return float(filters.threshold_otsu(block))
    try:
        thresholds = filters.threshold_multiotsu(block, nbins=128)
    except ValueError:  # as the library: retried with scikit-image's default bins
        thresholds = filters.threshold_multiotsu(block)
    return float(thresholds[0 if settings.middle_to_foreground else 1])


def _blocks(image: np.ndarray, settings: ThresholdSettings, tolerance: float) -> np.ndarray:
    """The block thresholds, blended over the image by a spline through the blocks' centres."""
    size = np.array(image.shape[:2], dtype=int)
    nblocks = size // settings.window_size
    if any(n < 2 for n in nblocks):
        raise ConfigError(f"adaptive threshold window of {settings.window_size} px is more than half of a "
                          f"{size[1]}x{size[0]} image; lower window_size ([Size of adaptive window])")  # fmt: skip
    increment = size.astype(float) / nblocks.astype(float)
    thresholds = np.zeros((nblocks[0], nblocks[1]))
    for i in range(nblocks[0]):
        i0, i1 = int(i * increment[0]), int((i + 1) * increment[0])
        for j in range(nblocks[1]):
            j0, j1 = int(j * increment[1]), int((j + 1) * increment[1])
            thresholds[i, j] = _block_threshold(image[i0:i1, j0:j1], settings, tolerance)
    order = min(3, int(np.min(nblocks)) - 1)
    x = np.linspace(int(increment[0] / 2), int((nblocks[0] - 0.5) * increment[0]), nblocks[0])
    y = np.linspace(int(increment[1] / 2), int((nblocks[1] - 0.5) * increment[1]), nblocks[1])
    import scipy.interpolate  # here: 0.2 s to import, and only adaptive thresholds use it

    spline = scipy.interpolate.RectBivariateSpline(x, y, thresholds, bbox=(0.5, image.shape[0] - 0.5, 0.5, image.shape[1] - 0.5),
                                                   kx=order, ky=order)  # fmt: skip
    return spline(np.linspace(0.5, int(nblocks[0] * increment[0]) - 0.5, image.shape[0]),
                  np.linspace(0.5, int(nblocks[1] * increment[1]) - 0.5, image.shape[1]))  # fmt: skip


def adaptive_threshold(image: np.ndarray, settings: ThresholdSettings, mask: np.ndarray | None = None) -> np.ndarray:
    """The module's adaptive threshold: a threshold per pixel, corrected, within the bounds and
    within 0.7-1.5 times the global threshold."""
    if mask is not None:
        image = np.where(mask, image, 0.0)
    conversion = None
    if settings.log_transform:
        image, conversion = _log_transform(image)
    if np.all(image == image.ravel()[0]):
        out = np.full_like(image, image.ravel()[0])
    elif settings.method == "sauvola":
        out = filters.threshold_sauvola(image, settings.window_size + (1 - settings.window_size % 2))
    else:
        tolerance = _li_tolerance(image) if settings.method == "minimum_cross_entropy" else 0.0
        out = _blocks(image, settings, tolerance)
    # the library's guide: on the (log-transformed) image, Robust Background with its defaults
    defaults = {f.name: f.default for f in dataclasses.fields(ThresholdSettings) if f.name in
                ("lower_outlier_fraction", "upper_outlier_fraction", "averaging", "variance", "deviations")}  # fmt: skip
    guide = global_threshold(image, dataclasses.replace(settings, scope="global", method="minimum_cross_entropy"
                                                        if settings.method == "sauvola" else settings.method, **defaults), mask)  # fmt: skip
    if conversion is not None:
        out = _inverse_log(out, conversion)
        guide = float(_inverse_log(guide, conversion))
    out = out * settings.correction_factor
    low = max(settings.lower_bound, guide * GLOBAL_LIMITS[0])
    high = min(settings.upper_bound, guide * GLOBAL_LIMITS[1])
    out[out < low] = low
    out[out > high] = high
    return out


def threshold(image: np.ndarray, settings: ThresholdSettings, mask: np.ndarray | None = None) -> float | np.ndarray:
    """The module's threshold: one number (global) or one per pixel (adaptive)."""
    if settings.scope == "adaptive":
        return adaptive_threshold(image, settings, mask)
    return global_threshold(image, settings, mask)


def apply_threshold(image: np.ndarray, threshold: float | np.ndarray, smoothing_scale: float,
                    mask: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Foreground: the image, Gaussian-smoothed at the threshold smoothing scale (its sigma:
    half of it is within the scale), at or above the threshold."""
    if smoothing_scale == 0:
        return image >= threshold if mask is None else (image >= threshold) & mask
    how = ("gaussian", smoothing_scale / 0.6744 / 2.0)
    if mask is None:  # the blurred all-ones image depends on the shape only: computed once
        mask = np.ones(image.shape, bool)
        bleed = blurred_ones(image.shape, how)
    else:
        bleed = blur(mask.astype(float), how)
    masked = np.zeros(image.shape, image.dtype)
    masked[mask] = image[mask]
    smoothed = blur(masked, how) / (bleed + np.finfo(float).eps)
    return (smoothed >= threshold) & mask


def blur(x: np.ndarray, how: tuple[str, float]) -> np.ndarray:
    """The modules' two smoothing filters, zero outside the image: ``("gaussian", sigma)``, the
    threshold's (``scipy.ndimage.gaussian_filter``, truncated at 4 sigma); ``("declump", size)``,
    declumping's Gaussian of sigma ``size / 2.35`` cut at ``size / 2`` px (a row pass, then a
    column pass). A float64 image takes :func:`_symmetric_blur`, which gives scipy's floats."""
    kernel = _kernel(how)
    if x.dtype == np.float64 and x.ndim == 2 and np.array_equal(kernel, kernel[::-1]):
        return _symmetric_blur(x, kernel)
    if how[0] == "gaussian":
        return ndi.gaussian_filter(x, how[1], mode="constant", cval=0)
    return ndi.convolve1d(ndi.convolve1d(x, kernel, axis=0, mode="constant"), kernel, axis=1, mode="constant")


@functools.lru_cache(maxsize=16)
def _kernel(how: tuple[str, float]) -> np.ndarray:
    """The filter's weights: scipy's ``_gaussian_kernel1d`` (the same formula in scipy 1.10 and
    1.17) for ``"gaussian"``, CellProfiler's for ``"declump"``."""
    kind, size = how
    if kind == "gaussian":
        radius = int(4.0 * float(size) + 0.5)
        x = np.arange(-radius, radius + 1)
        phi = np.exp(-0.5 / (size * size) * x**2)
        kernel = phi / phi.sum()
    else:
        sigma = size / 2.35
        half = max(int(float(size) / 2.0), 1)
        kernel = 1 / np.sqrt(2.0 * np.pi) / sigma * np.exp(-0.5 * np.arange(-half, half + 1) ** 2 / sigma**2)
    kernel.setflags(write=False)
    return kernel


def _symmetric_blur(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``correlate1d`` along axis 0, then along axis 1, zero outside, for an odd symmetric
    ``kernel``: scipy's loop for symmetric weights (``w0 x_i``, then ``+ (x_{i-k} + x_{i+k}) w_k``
    for k from the widest in), so the same floats, a row of pixels at a time."""
    x = np.ascontiguousarray(x)
    rows = np.empty_like(x)
    out = np.empty_like(x)
    _correlate_axis0(x, kernel, rows)
    _correlate_axis1(rows, kernel, out)
    return out


@numba.njit(cache=True, nogil=True)
def _correlate_axis0(x, w, out):
    height, width = x.shape
    r = len(w) // 2
    for i in range(height):
        o = out[i]
        xi = x[i]
        for j in range(width):
            o[j] = xi[j] * w[r]
        for k in range(r, 0, -1):
            wk = w[r - k]
            up, down = i - k, i + k
            if up >= 0 and down < height:
                a = x[up]
                b = x[down]
                for j in range(width):
                    o[j] += (a[j] + b[j]) * wk
            elif up >= 0:
                a = x[up]
                for j in range(width):
                    o[j] += (a[j] + 0.0) * wk
            elif down < height:
                b = x[down]
                for j in range(width):
                    o[j] += (0.0 + b[j]) * wk
            else:
                for j in range(width):
                    o[j] += (0.0 + 0.0) * wk


@numba.njit(cache=True, nogil=True)
def _correlate_axis1(x, w, out):
    height, width = x.shape
    r = len(w) // 2
    line = np.zeros(width + 2 * r)  # a row with r zeros either side
    for i in range(height):
        line[r : r + width] = x[i]
        o = out[i]
        for j in range(width):
            o[j] = line[j + r] * w[r]
        for k in range(r, 0, -1):
            wk = w[r - k]
            left = line[r - k : r - k + width]  # (slices: the loop below vectorizes; indexing line did not)
            right = line[r + k : r + k + width]
            for j in range(width):
                o[j] += (left[j] + right[j]) * wk


@functools.lru_cache(maxsize=16)
def blurred_ones(shape: tuple[int, ...], how: tuple[str, float]) -> np.ndarray:
    """The edge correction of a smoothing filter on an unmasked image: the filter applied to
    ones (so the same floats), kept read-only per shape."""
    out = blur(np.ones(shape, float), how)
    out.setflags(write=False)
    return out
