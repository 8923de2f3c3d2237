"""CellProfiler's object identification: IdentifyPrimaryObjects, IdentifySecondaryObjects
(Propagation) and IdentifyTertiaryObjects, with the modules' own settings.

The steps and their order are those of ``cellprofiler_library`` (CellProfiler 5's library; its
results on ExampleHuman equal CellProfiler 4.0.6's tables there); the scipy and scikit-image
calls are the same calls, and centrosome's compiled helpers and scikit-image 0.24's watershed
are ports (:mod:`cellfeat.segment.cpmorph`, :mod:`cellfeat.segment.propagate`), so that the
same image and settings give the same objects.
``scripts/cp_reference.py`` runs CellProfiler's own code (in its own environment) as the
reference for tests and ``scripts/bench_identify.py``.

Images are floats scaled as CellProfiler scales them (8-bit / 255, 16-bit / 65535), which is
what the threshold bounds (0-1) refer to. Lengths are pixels.

Supported: the thresholds of :mod:`cellfeat.segment.cpthreshold` (global and adaptive),
declumping by intensity or shape, dividing lines by intensity, shape or propagation, the
smoothing filter and the minimum distance between maxima (automatic or set), low-resolution
maxima, hole filling (never / after thresholding and declumping / after declumping), the size
and border filters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import scipy.ndimage as ndi

from cellfeat.segment import cpmorph
from cellfeat.segment.cpthreshold import (
    apply_threshold,
    blur,
    blurred_ones,
    threshold,
)
from cellfeat.segment.objects import (
    LABEL_DTYPE,
    Segmentation,
    empty,
    relabel_sequential,
    touches_border,
)
from cellfeat.segment.params import (  # noqa: F401  (re-exported)
    DIVIDING_METHODS,
    FILL_HOLES,
    SECONDARY_METHODS,
    UNCLUMP_METHODS,
    PrimarySettings,
    SecondarySettings,
    ThresholdSettings,
)

EIGHT = np.ones((3, 3), bool)


@dataclass(frozen=True)
class Primary:
    """IdentifyPrimaryObjects' output: the objects, the objects before the border and size
    filters (IdentifySecondaryObjects uses them), and the threshold (an adaptive one's mean)."""

    labels: np.ndarray
    unedited: np.ndarray
    threshold: float


# --------------------------------------------------------------------------- declumping


def _smooth(image: np.ndarray, mask: np.ndarray | None, filter_size: float) -> np.ndarray:
    """The declumping smoothing filter: a Gaussian of sigma ``filter_size / 2.35`` cut at
    ``filter_size / 2`` px, corrected for the mask's edges."""
    if filter_size == 0:
        return image
    how = ("declump", float(filter_size))
    if image.dtype == np.float64 and (mask is None or mask.all()):  # the masked steps' values, without their copies
        return blur(image, how) / blurred_ones(image.shape, how)
    if mask is None:
        mask = np.ones(image.shape, bool)
    edge = blurred_ones(image.shape, how) if mask.all() else blur(mask.astype(float), how)
    out = image.copy()
    out[~mask] = 0
    smoothed = blur(out, how)
    out[mask] = smoothed[mask] / edge[mask]
    return out


def _maxima(image: np.ndarray, labels: np.ndarray, footprint: np.ndarray, resize: float) -> np.ndarray:
    if resize < 1.0:
        shape = np.array(image.shape) * resize
        grid = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float) / resize
        small_image = ndi.map_coordinates(image, grid)
        small_labels = ndi.map_coordinates(labels, grid, order=0).astype(labels.dtype)
    else:
        small_image, small_labels = image, labels
    maxima = cpmorph.is_local_maximum(small_image, small_labels, footprint)
    maxima[small_image <= 0] = False
    if resize < 1.0:
        inverse = float(image.shape[0]) / float(maxima.shape[0])
        grid = np.mgrid[0 : image.shape[0], 0 : image.shape[1]].astype(float) / inverse
        maxima = ndi.map_coordinates(maxima.astype(float), grid) > 0.5
    return cpmorph.binary_shrink(maxima)


def declump(image: np.ndarray, labels: np.ndarray, settings: PrimarySettings, mask: np.ndarray | None = None) -> np.ndarray:
    """Split clumps: one marker a local maximum (of the smoothed image or of the distance to
    the background), then a watershed (or propagation) from the markers inside the objects."""
    if settings.unclump == "none" or settings.dividing_lines == "none":
        return labels
    min_size = settings.min_diameter
    filter_size = 2.35 * min_size / 3.5 if settings.smoothing_filter is None else settings.smoothing_filter
    blurred = _smooth(image, mask, filter_size)
    if min_size > 10 and settings.low_resolution_maxima:
        resize = 10.0 / float(min_size)
        suppression = 7 if settings.maxima_distance is None else settings.maxima_distance * resize + 0.5
    else:
        resize = 1.0
        suppression = min_size / 1.5 if settings.maxima_distance is None else settings.maxima_distance
    footprint = cpmorph.strel_disk(max(1, suppression - 0.5))
    distance = None
    if settings.unclump == "intensity":
        maxima = _maxima(blurred, labels, footprint, resize)
    else:
        foreground = (cpmorph.fill_labeled_holes(labels) > 0) if settings.fill_holes == "never" else labels > 0
        distance = ndi.distance_transform_edt(foreground)
        distance += np.random.RandomState(0).uniform(0, 0.001, distance.shape)  # CellProfiler's tie-break
        maxima = _maxima(distance, labels, footprint, resize)
    markers, count = ndi.label(maxima, EIGHT)
    inside = labels != 0
    if settings.dividing_lines == "propagate":
        from cellfeat.segment.propagate import propagate

        return propagate(np.zeros(markers.shape), markers, inside, 1.0)[0]
    if settings.dividing_lines == "intensity":
        surface = 1 - image
    else:
        if distance is None:
            distance = ndi.distance_transform_edt(inside)
        surface = -distance
        surface = surface - surface.min()
    seeds = np.zeros(surface.shape, np.int16 if count < np.iinfo(np.int16).max else np.int32)
    seeds[markers > 0] = -markers[markers > 0]
    return -cpmorph.watershed(surface, seeds, inside)


# --------------------------------------------------------------------------- filters


def _discard_border(labels: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    labels = labels.copy()
    edge = np.concatenate((labels[0, :], labels[:, 0], labels[-1, :], labels[:, -1]))
    touching = np.zeros(int(labels.max()) + 1, bool)
    touching[edge] = True
    touching[0] = False
    if touching.any():
        labels[touching[labels]] = 0
    elif mask is not None:
        border = mask & ~ndi.binary_erosion(mask)
        touching[labels[border]] = True
        touching[0] = False
        if touching.any():
            labels[touching[labels]] = 0
    return labels


def _discard_size(labels: np.ndarray, min_diameter: float, max_diameter: float) -> np.ndarray:
    return _discard_size_kernel(np.ascontiguousarray(labels), np.pi * min_diameter * min_diameter / 4,
                                np.pi * max_diameter * max_diameter / 4)  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _discard_size_kernel(labels, smallest, largest):
    """The objects whose area is below ``smallest`` or above ``largest`` set to 0 (a copy)."""
    out = labels.copy()
    flat = out.ravel()
    top = 0
    for k in range(flat.size):
        top = max(top, flat[k])
    if top <= 0:
        return out
    areas = np.zeros(top + 1, np.int64)
    for k in range(flat.size):
        if flat[k] > 0:
            areas[flat[k]] += 1
    drop = np.zeros(top + 1, np.bool_)
    for v in range(1, top + 1):
        drop[v] = areas[v] < smallest or areas[v] > largest
    for k in range(flat.size):
        if flat[k] > 0 and drop[flat[k]]:
            flat[k] = 0
    return out


def identify_primary(image: np.ndarray, settings: PrimarySettings = PrimarySettings(), mask: np.ndarray | None = None) -> Primary:
    """IdentifyPrimaryObjects on one float image (CellProfiler's scale)."""
    image = np.asarray(image, np.float64)
    level = threshold(image, settings.threshold, mask)
    binary = apply_threshold(image, level, settings.threshold.smoothing_scale, mask)
    max_size = settings.max_diameter
    if settings.fill_holes == "both":
        binary = cpmorph.fill_labeled_holes(binary, size_fn=lambda area, is_object: area < max_size * max_size)
    labels = ndi.label(binary, EIGHT)[0]
    labels = declump(image, labels, settings, mask)
    unedited = labels.copy()
    if settings.discard_border:
        labels = _discard_border(labels, mask)
    if settings.discard_outside_diameter:
        labels = _discard_size(labels, settings.min_diameter, settings.max_diameter)
    if settings.fill_holes != "never":
        labels = cpmorph.fill_labeled_holes(labels)
    return Primary(labels=relabel_sequential(labels), unedited=unedited.astype(np.int32), threshold=float(np.mean(level)))


# --------------------------------------------------------------------------- secondary, tertiary

@dataclass(frozen=True)
class Secondary:
    """IdentifySecondaryObjects' output: the cells, numbered as their primary objects, the
    primary objects (renumbered where ``discard_border`` dropped some) and the threshold."""

    labels: np.ndarray
    primary: np.ndarray
    threshold: float


def _keep_labelled(labels_out: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """Each output region numbered as the (largest) primary object in it; 0 where none is."""
    top = int(labels_out.max())
    if top == 0:
        return labels_out.copy()
    lookup = cpmorph.label_maximum(objects, labels_out)
    lookup[0] = 0
    return lookup[labels_out]


def identify_secondary(image: np.ndarray, primary: Primary, settings: SecondarySettings = SecondarySettings(),
                       mask: np.ndarray | None = None) -> Secondary:  # fmt: skip
    """IdentifySecondaryObjects around ``primary``'s objects on one float image."""
    image = np.asarray(image, np.float64)
    objects = primary.labels
    if image.shape != objects.shape:
        raise ValueError(f"image {image.shape} and primary objects {objects.shape} must have one shape")
    level, binary = float("nan"), None
    if settings.method != "distance_n":
        level = threshold(image, settings.threshold, mask)
        binary = apply_threshold(image, level, settings.threshold.smoothing_scale, mask)
    # the unedited primary objects that touch the edge stay as seeds (they claim their ground),
    # the others only where they survived the filters
    seeds = primary.unedited.copy()
    edge = np.unique(np.concatenate((seeds[0, :], seeds[-1, :], seeds[:, 0], seeds[:, -1])))
    touching = np.zeros(int(seeds.max()) + 1, bool)
    touching[edge] = True
    seeds[~touching[seeds] & (objects == 0)] = 0
    full = np.ones(image.shape, bool) if mask is None else mask
    if settings.method == "distance_n":
        distances, (ii, jj) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
        out = np.zeros(seeds.shape, int)
        near = distances <= settings.distance
        out[near] = seeds[ii[near], jj[near]]
    elif settings.method == "distance_b":
        from cellfeat.segment.propagate import propagate

        out, distances = propagate(image, seeds, binary, 1.0)
        out[distances > settings.distance] = 0
        out[seeds > 0] = seeds[seeds > 0]
    elif settings.method == "propagation":
        from cellfeat.segment.propagate import propagate

        out = propagate(image, seeds, binary, settings.regularization)[0]
    else:
        surface = np.abs(ndi.sobel(image)) if settings.method == "watershed_gradient" else 1 - image
        out = cpmorph.watershed(surface, seeds, (binary | (seeds > 0)) & full)
    if settings.fill_holes:
        out = cpmorph.fill_labeled_holes(out, mask=out == 0)
    cells = _keep_labelled(out, objects)
    kept = objects
    if settings.discard_border:
        if mask is not None:
            border = mask & ~ndi.binary_erosion(mask)
            edge_labels = np.unique(cells[border])
        else:
            edge_labels = np.unique(np.concatenate((cells[0, :], cells[-1, :], cells[:, 0], cells[:, -1])))
        lookup = np.arange(max(int(cells.max()), int(objects.max())) + 1)
        lookup[edge_labels] = 0
        cells = lookup[cells]
        top = int(objects.max())
        new = cpmorph.label_maximum(cells, objects)[: top + 1]
        new[0] = 0
        new[new != 0] = np.arange(np.count_nonzero(new)) + 1
        kept, cells = new[objects], new[cells]
    return Secondary(labels=cells.astype(np.int32), primary=kept.astype(np.int32), threshold=float(np.mean(level)))


def outline(labels: np.ndarray) -> np.ndarray:
    """Object pixels with a differently labelled 8-neighbour, and those on the image's edge."""
    different = np.zeros(labels.shape, bool)
    for a, b in (((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
                 ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                 ((slice(1, None), slice(1, None)), (slice(None, -1), slice(None, -1))),
                 ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None)))):  # fmt: skip
        d = labels[a] != labels[b]
        different[a] |= d
        different[b] |= d
    different[0, :] = different[-1, :] = different[:, 0] = different[:, -1] = True
    out = np.zeros_like(labels)
    out[different] = labels[different]
    return out


def identify_tertiary(primary: np.ndarray, secondary: np.ndarray, *, shrink: bool = True) -> np.ndarray:
    """IdentifyTertiaryObjects: the secondary objects minus the primary ones (shrunk by their
    outline first, so that something always remains); an object left empty keeps one pixel."""
    tertiary = secondary.copy()
    inside = primary != 0
    if shrink:
        inside &= outline(primary) == 0
    tertiary[inside] = 0
    present, first = np.unique(secondary, return_index=True)
    for label in np.setdiff1d(present, np.unique(tertiary)):
        row, col = np.unravel_index(first[np.searchsorted(present, label)], secondary.shape)
        tertiary[row, col] = label
    return tertiary


# --------------------------------------------------------------------------- a site


def exact_scale(plane: np.ndarray) -> np.ndarray:
    """A plane loaded as float32 (``cellfeat.images``: 8-bit / 255, 16-bit / 65535) back in the
    float64 values CellProfiler computes with (k / 255 or k / 65535 exactly), so that thresholds
    and comparisons see the same numbers; a plane on neither grid is returned as float64."""
    plane = np.asarray(plane, np.float64)
    for scale in (255.0, 65535.0):
        counts = plane * scale
        rounded = np.round(counts)
        if np.all(np.abs(counts - rounded) < 1e-3):
            return rounded / scale
    return plane


def segment_site(site: np.ndarray, *, nuclei_channel: int = 0, cell_channel: int = 1,
                 primary: PrimarySettings = PrimarySettings(), secondary: SecondarySettings = SecondarySettings(),
                 shrink_nuclei: bool = True, drop_border: bool = False):  # fmt: skip
    """Nuclei (IdentifyPrimaryObjects on ``nuclei_channel``), cells (IdentifySecondaryObjects
    over ``cell_channel``) and cytoplasm (IdentifyTertiaryObjects) of a ``(C, H, W)`` site, as
    a :class:`~cellfeat.segment.objects.Segmentation`."""
    site = np.asarray(site)
    if site.ndim != 3:
        raise ValueError(f"expected a (C, H, W) site, got shape {site.shape}")
    for name, index in (("nuclei", nuclei_channel), ("cell", cell_channel)):
        if not 0 <= index < site.shape[0]:
            raise ValueError(f"{name} channel index {index} is outside the site's {site.shape[0]} channels")
    nuclei = identify_primary(exact_scale(site[nuclei_channel]), primary)
    n = int(nuclei.labels.max())
    if n == 0:
        return empty(site.shape[1:])
    cells = identify_secondary(exact_scale(site[cell_channel]), nuclei, secondary)
    kept = cells.primary
    n = int(kept.max())
    if n == 0:
        return empty(site.shape[1:])
    cytoplasm = identify_tertiary(kept, cells.labels, shrink=shrink_nuclei)
    seg = Segmentation(nuclei=kept.astype(LABEL_DTYPE), cells=cells.labels.astype(LABEL_DTYPE),
                       cytoplasm=cytoplasm.astype(LABEL_DTYPE), border=touches_border(cells.labels, n))  # fmt: skip
    return seg.drop_border() if drop_border else seg
