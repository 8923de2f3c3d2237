"""The output contract every segmenter honours, and the helpers that enforce it.

A :class:`Segmentation` holds three int32 label images of one site, as CellProfiler's
IdentifyPrimaryObjects / IdentifySecondaryObjects / IdentifyTertiaryObjects produce them:

* ``nuclei``: 0 = background, objects numbered 1..N without gaps;
* ``cells``: the same numbers; cell ``k`` contains nucleus ``k`` (every nucleus pixel of
  object ``k`` is a cell pixel of object ``k``);
* ``cytoplasm``: cell ``k`` minus nucleus ``k``. It may hold no pixel for an object whose cell
  is no larger than its nucleus (feature code must accept empty objects).

``border[k - 1]`` says whether object ``k`` (its cell, which contains its nucleus) touches the
image edge; :meth:`Segmentation.drop_border` removes those objects and renumbers the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

LABEL_DTYPE = np.int32


@dataclass(frozen=True)
class Segmentation:
    """Nuclei, cells and cytoplasm of one site; object ``k`` has label ``k`` in all three."""

    nuclei: np.ndarray
    cells: np.ndarray
    cytoplasm: np.ndarray
    border: np.ndarray  # bool (N,): object k + 1 touches the image edge

    @property
    def count(self) -> int:
        return int(self.border.shape[0])

    def drop_border(self) -> Segmentation:
        """The same objects less those touching the image edge, renumbered 1..M in order."""
        return from_labels(self.nuclei, self.cells, keep=~self.border, cytoplasm=self.cytoplasm)

    def validate(self) -> Segmentation:
        """Check the contract; raise ``ValueError`` naming the first broken rule."""
        n = self.count
        for name in ("nuclei", "cells", "cytoplasm"):
            arr = getattr(self, name)
            if arr.dtype != LABEL_DTYPE:
                raise ValueError(f"{name} labels are {arr.dtype}; expected int32")
            if arr.shape != self.nuclei.shape:
                raise ValueError(f"{name} labels have shape {arr.shape}; nuclei have {self.nuclei.shape}")
        for name in ("nuclei", "cells"):
            ids = np.unique(getattr(self, name))
            ids = ids[ids != 0]
            if not np.array_equal(ids, np.arange(1, n + 1)):
                raise ValueError(f"{name} labels are not 1..{n} without gaps (found {len(ids)} labels, max {ids.max(initial=0)})")
        inside = self.nuclei > 0
        if np.any(self.cells[inside] != self.nuclei[inside]):
            raise ValueError("some nucleus pixels lie outside the cell with the same number")
        # cell minus nucleus, or (CellProfiler's IdentifyTertiaryObjects with its shrink) minus the
        # nucleus' inside: the nucleus outline may stay in the cytoplasm
        outside = np.where(inside, 0, self.cells)
        marked = self.cytoplasm > 0
        if np.any(self.cytoplasm[marked] != self.cells[marked]) or np.any(self.cytoplasm[~inside] != outside[~inside]):
            raise ValueError("cytoplasm is not cell minus nucleus")
        return self


def empty(shape: tuple[int, int]) -> Segmentation:
    """A site with no objects (valid, not an error)."""
    zeros = np.zeros(shape, LABEL_DTYPE)
    return Segmentation(zeros, zeros.copy(), zeros.copy(), np.zeros(0, bool))


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber the non-zero labels 1..N in order of their old values, as int32."""
    labels = np.asarray(labels)
    if labels.size and labels.min() >= 0 and labels.max() <= labels.size:
        ids = np.flatnonzero(np.bincount(labels.ravel()))  # the labels present, ascending: counted, not sorted
    else:
        ids = np.unique(labels)
    ids = ids[ids != 0]
    if ids.size == 0:
        return np.zeros(labels.shape, LABEL_DTYPE)
    lut = np.zeros(int(ids[-1]) + 1, LABEL_DTYPE)
    lut[ids] = np.arange(1, ids.size + 1, dtype=LABEL_DTYPE)
    return lut[labels]


def make_cytoplasm(cells: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """Cell minus nucleus, keeping the cell's number (CellProfiler IdentifyTertiaryObjects)."""
    return np.where(nuclei > 0, 0, cells).astype(LABEL_DTYPE)


def touches_border(labels: np.ndarray, n: int | None = None) -> np.ndarray:
    """Bool ``(n,)``: whether label ``k + 1`` has a pixel on the image's outer rows/columns."""
    n = int(labels.max(initial=0)) if n is None else n
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    flags = np.zeros(n + 1, bool)
    flags[edge] = True
    return flags[1:]


def from_labels(nuclei: np.ndarray, cells: np.ndarray, *, keep: np.ndarray | None = None,
                cytoplasm: np.ndarray | None = None) -> Segmentation:  # fmt: skip
    """Build a :class:`Segmentation` from nuclei and cells that already share numbers.

    ``cells`` must contain each nucleus under the nucleus's number (as a seeded watershed
    from the nuclei gives); numbers may have gaps. ``keep`` (bool, one per old label
    ``1..max``) selects objects to keep. The result is renumbered 1..N in label order.
    ``cytoplasm``: the objects' cytoplasm under the same numbers (default: cell minus nucleus).
    """
    nuclei = np.asarray(nuclei)
    cells = np.where(nuclei > 0, nuclei, cells)  # a nucleus pixel always belongs to its own cell
    n_old = int(max(nuclei.max(initial=0), cells.max(initial=0)))
    present = np.zeros(n_old + 1, bool)
    present[np.unique(nuclei)] = True  # an object is defined by its nucleus
    present[0] = False
    if keep is not None:
        keep = np.asarray(keep, bool)
        if keep.shape != (n_old,):
            raise ValueError(f"keep has shape {keep.shape}; expected ({n_old},), one flag per label")
        present[1:] &= keep
    lut = np.zeros(n_old + 1, LABEL_DTYPE)
    lut[present] = np.arange(1, int(present.sum()) + 1, dtype=LABEL_DTYPE)
    nuclei_out, cells_out = lut[nuclei], lut[cells]
    n = int(present.sum())
    return Segmentation(
        nuclei=nuclei_out,
        cells=cells_out,
        cytoplasm=make_cytoplasm(cells_out, nuclei_out) if cytoplasm is None else lut[np.asarray(cytoplasm)],
        border=touches_border(cells_out, n),
    )


def pair_objects(nuclei: np.ndarray, cells: np.ndarray, *, min_overlap: float = 0.5) -> Segmentation:
    """Give independently segmented nuclei and cells one numbering (e.g. two Cellpose models).

    Each cell keeps the nucleus that has the most pixels inside it, provided at least
    ``min_overlap`` of that nucleus lies inside the cell; the nucleus is clipped to its cell.
    Cells without such a nucleus and nuclei without a cell are dropped, as CellProfiler's
    IdentifySecondaryObjects drops cells without a primary object.
    """
    nuclei = relabel_sequential(nuclei)
    cells = relabel_sequential(cells)
    n_nuc, n_cell = int(nuclei.max(initial=0)), int(cells.max(initial=0))
    if n_nuc == 0 or n_cell == 0:
        return empty(nuclei.shape)
    both = (nuclei > 0) & (cells > 0)
    pairs = np.bincount(nuclei[both].astype(np.int64) * (n_cell + 1) + cells[both], minlength=(n_nuc + 1) * (n_cell + 1))
    overlap = pairs.reshape(n_nuc + 1, n_cell + 1)[1:, 1:]  # (nucleus, cell)
    nuc_area = np.bincount(nuclei.ravel(), minlength=n_nuc + 1)[1:]
    best_nucleus = overlap.argmax(axis=0)  # per cell
    best_count = overlap[best_nucleus, np.arange(n_cell)]
    ok = best_count >= min_overlap * nuc_area[best_nucleus]
    ok &= best_count > 0
    # a nucleus claimed by two cells stays with the cell holding more of it
    claim = np.full(n_nuc, -1)
    for cell in np.flatnonzero(ok)[np.argsort(-best_count[ok], kind="stable")]:
        if claim[best_nucleus[cell]] < 0:
            claim[best_nucleus[cell]] = cell
    cell_to_obj = np.zeros(n_cell + 1, LABEL_DTYPE)
    nuc_to_obj = np.zeros(n_nuc + 1, LABEL_DTYPE)
    for obj, nucleus in enumerate(np.flatnonzero(claim >= 0), start=1):
        cell_to_obj[claim[nucleus] + 1] = obj
        nuc_to_obj[nucleus + 1] = obj
    new_cells = cell_to_obj[cells]
    new_nuclei = np.where(nuc_to_obj[nuclei] == new_cells, new_cells, 0).astype(LABEL_DTYPE)
    return from_labels(new_nuclei, new_cells)


def fill_holes_per_label(labels: np.ndarray) -> np.ndarray:
    """Fill the holes of each object with its own label (holes touching another object stay)."""
    out = labels.copy()
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        obj = labels[sl] == k
        filled = ndi.binary_fill_holes(obj)
        out[sl][filled & (labels[sl] == 0)] = k
    return out


def draw_outlines(rgb: np.ndarray, labels: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """A copy of ``(H, W, 3)`` uint8 ``rgb`` with the objects' inner outlines drawn in ``color``."""
    from skimage.segmentation import find_boundaries

    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"image is {rgb.shape[:2]} but labels are {labels.shape}")
    out = rgb.copy()
    out[find_boundaries(labels, mode="inner")] = color
    return out
