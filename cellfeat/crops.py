"""Cell crops for the CNN embeddings, without torch: windows around each cell, their statistics.

* :func:`cell_crops`: a ``size x size`` window of all channels centred on each cell's centroid,
  zero where it runs off the image (and, with ``mask_outside``, outside the cell), row ``i``
  for label ``i + 1``; :func:`crop_corners` says where the windows are;
* :func:`site_stats` / :func:`pooled_stats` and :func:`normalize_crops`: per-channel
  ``(x - mean) / std``, with the site's own statistics or given (e.g. per-plate) ones;
* :class:`SiteWindows` / :func:`site_windows`: what a device needs to cut the same crops itself
  (:meth:`cellfeat.embed.Embedder.embed_windows`): the planes and the windows' corners;
* :func:`embedding_table`: vectors as a table with ``Metadata_ObjectNumber``.

Worker processes that send their crops to a device stage import this module only, not torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

OBJECT_NUMBER = "Metadata_ObjectNumber"


def cell_centres(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids ``(N, 2)`` (row, col; NaN for labels without pixels) and pixel counts ``(N,)``
    of labels ``1..N``, ``N = labels.max()``."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D label image, got shape {labels.shape}")
    n = int(labels.max()) if labels.size else 0
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:]
    rows, cols = np.indices(labels.shape, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.bincount(flat, weights=rows.ravel(), minlength=n + 1)[1:] / counts
        cx = np.bincount(flat, weights=cols.ravel(), minlength=n + 1)[1:] / counts
    return np.stack([cy, cx], axis=1), counts


def crop_corners(labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Where :func:`cell_crops` takes each cell's window: ``(top-left corners (N, 2) int64, in the
    coordinates of the image padded by ``size`` on every side; present (N,) bool)``. The window's
    pixel ``(size // 2, size // 2)`` is the cell's centroid rounded to the nearest pixel."""
    centres, counts = cell_centres(labels)
    present = counts > 0
    top_left = np.where(present[:, None], np.floor(np.nan_to_num(centres) + 0.5), 0).astype(np.int64) - size // 2 + size
    return top_left, present


def cell_crops(
    pixels: np.ndarray,
    labels: np.ndarray,
    size: int,
    *,
    mask_outside: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``size x size`` window of every channel around every cell.

    ``pixels`` is ``(C, H, W)``, ``labels`` ``(H, W)`` int (0 background, cells ``1..N``).
    Window ``i`` belongs to label ``i + 1``: its pixel ``(size // 2, size // 2)`` is the cell's
    centroid rounded to the nearest pixel; what lies beyond the image is 0, and so is every
    pixel not of the cell when ``mask_outside``. Returns ``(crops (N, C, size, size) float32,
    present (N,) bool)``; a label without pixels has ``present`` False and an all-zero window.
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    labels = np.asarray(labels)
    if pixels.ndim != 3:
        raise ValueError(f"pixels must be (C, H, W), got shape {pixels.shape}")
    if labels.shape != pixels.shape[1:]:
        raise ValueError(f"labels have shape {labels.shape}, pixels {pixels.shape[1:]}; they must match")
    if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise ValueError(f"labels must be non-negative integers, got dtype {labels.dtype}")
    if int(size) < 1:
        raise ValueError(f"crop size must be a positive number of pixels, got {size}")
    size = int(size)
    top_left, present = crop_corners(labels, size)
    n, c = len(present), pixels.shape[0]
    if n == 0:
        return np.zeros((0, c, size, size), np.float32), present
    ys, xs = top_left[:, 0], top_left[:, 1]
    padded = np.pad(pixels, ((0, 0), (size, size), (size, size)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=(1, 2))
    crops = np.ascontiguousarray(windows[:, ys, xs].transpose(1, 0, 2, 3))  # (N, C, size, size)
    if mask_outside:
        padded_labels = np.pad(labels, size)
        label_windows = np.lib.stride_tricks.sliding_window_view(padded_labels, (size, size))[ys, xs]
        crops *= (label_windows == np.arange(1, n + 1)[:, None, None])[:, None]
    crops[~present] = 0.0
    return crops, present


# --------------------------------------------------------------------------- normalisation


def site_stats(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation ``(C,)`` of one ``(C, H, W)`` site."""
    return pooled_stats([pixels])


def pooled_stats(sites: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation ``(C,)`` over all pixels of several ``(C, H, W)``
    sites together, e.g. a sample of a plate's sites for :attr:`Normalization.GIVEN`."""
    total = square = None
    count = 0
    for site in sites:
        site = np.asarray(site, dtype=np.float64)
        if site.ndim != 3:
            raise ValueError(f"sites must be (C, H, W), got shape {site.shape}")
        s, q = site.sum(axis=(1, 2)), np.square(site).sum(axis=(1, 2))
        if total is not None and s.shape != total.shape:
            raise ValueError(f"sites have {s.shape[0]} and {total.shape[0]} channels; all must have the same")
        total, square = (s, q) if total is None else (total + s, square + q)
        count += site.shape[1] * site.shape[2]
    if total is None or count == 0:
        raise ValueError("no pixels to compute channel statistics from: give at least one non-empty site")
    mean = total / count
    std = np.sqrt(np.maximum(square / count - mean**2, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


def normalize_crops(crops: np.ndarray, mean: Sequence[float], std: Sequence[float], *, eps: float = 1e-6) -> np.ndarray:
    """``(crops - mean) / std`` per channel (axis 1 of ``(N, C, h, w)``), as a new float32 array.

    Pixels that :func:`cell_crops` set to 0 (off the image, outside the cell) become
    ``-mean / std``: the value of a black pixel, like the background of a fluorescence image.
    """
    crops = np.asarray(crops, dtype=np.float32)
    mean = np.asarray(mean, dtype=np.float32).reshape(-1)
    std = np.asarray(std, dtype=np.float32).reshape(-1)
    if crops.ndim != 4 or mean.shape != (crops.shape[1],) or std.shape != (crops.shape[1],):
        raise ValueError(
            f"crops must be (N, C, h, w) with one mean and std per channel; got crops {crops.shape}, "
            f"mean {mean.shape}, std {std.shape}"
        )
    return (crops - mean[:, None, None]) / np.maximum(std, eps)[:, None, None]


@dataclass
class SiteWindows:
    """What the network needs of one site to embed its cells where the crops are cut (on the
    embedder's device, :meth:`Embedder.embed_windows`): the pixels, the top-left corners of the
    present cells' windows (:func:`crop_corners`), the labels where ``mask_outside``, and the
    per-channel statistics the crops are normalized with."""

    pixels: np.ndarray  # (C, H, W) float32, or uint8/uint16 grey levels where scale is set
    corners: np.ndarray  # (n, 2) int64, the present cells only
    mean: np.ndarray  # (C,)
    std: np.ndarray  # (C,)
    labels: np.ndarray | None = None  # (H, W) int32 with mask_outside, else None
    ids: np.ndarray | None = None  # (n,) the present cells' labels, with mask_outside
    scale: int = 0  # pixels hold grey levels: the float32 pixels are pixels / scale (0: pixels are those)


def compact_planes(pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """``(levels, scale)``: the float32 planes of an 8- or 16-bit image as the grey levels they were
    read from (:func:`cellfeat.images.read_image` divides by 255 or 65535), 4x or 2x fewer bytes to
    send; ``levels / scale`` in float32 gives back every value exactly (checked: else the float32
    planes and scale 0)."""
    pixels = np.asarray(pixels, np.float32)
    for scale, dtype in ((255, np.uint8), (65535, np.uint16)):
        scaled = np.rint(pixels * np.float32(scale))
        if scaled.min(initial=0) < 0 or scaled.max(initial=0) > scale:
            continue
        levels = scaled.astype(dtype)
        if np.array_equal(levels.astype(np.float32) / np.float32(scale), pixels):
            return levels, scale
    return pixels, 0


def site_windows(pixels: np.ndarray, labels: np.ndarray, size: int, *, mask_outside: bool,
                 stats: tuple[Sequence[float], Sequence[float]] | None, compact: bool = False) -> tuple[SiteWindows, np.ndarray]:  # fmt: skip
    """``(SiteWindows, present)`` of one site: ``stats`` = (mean, std), or the site's own where None;
    ``compact``: the planes as grey levels where they are exactly that (:func:`compact_planes`)."""
    corners, present = crop_corners(labels, size)
    mean, std = site_stats(pixels) if stats is None else stats
    ids = np.flatnonzero(present).astype(np.int64) + 1
    levels, scale = compact_planes(pixels) if compact else (np.asarray(pixels, np.float32), 0)
    return SiteWindows(levels, corners[present], np.asarray(mean, np.float32), np.asarray(std, np.float32),
                       labels=np.asarray(labels, np.int32) if mask_outside else None,
                       ids=ids if mask_outside else None, scale=scale), present  # fmt: skip


def embedding_columns(name: str, dim: int) -> list[str]:
    """``Embedding_{name}_{i:04d}`` for ``i < dim``."""
    return [f"Embedding_{name}_{i:04d}" for i in range(dim)]


def site_tables(presents: Sequence[np.ndarray], vectors: np.ndarray, name: str) -> list[pd.DataFrame]:
    """One embedding table per site from the present cells' vectors of all sites, concatenated in
    site order (``(sum of present, D)``): a label without pixels gets a NaN row."""
    dim = vectors.shape[1]
    tables, start = [], 0
    for present in presents:
        rows = np.full((len(present), dim), np.nan, np.float32)
        rows[present] = vectors[start : start + int(present.sum())]
        start += int(present.sum())
        tables.append(embedding_table(rows, embedding_columns(name, dim)))
    return tables


def embedding_table(vectors: np.ndarray, columns: Sequence[str]) -> pd.DataFrame:
    """``Metadata_ObjectNumber`` (int64, ``1..N``) then one float32 column per embedding dimension."""
    vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, len(columns))
    table = pd.DataFrame(vectors, columns=list(columns))
    table.insert(0, OBJECT_NUMBER, np.arange(1, len(vectors) + 1, dtype=np.int64))
    return table
