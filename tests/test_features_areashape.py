"""AreaShape and Neighbors families: numba kernels vs cp_measure / centrosome / scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import ellipse
from skimage.filters import threshold_otsu
from skimage.measure import label
from skimage.segmentation import expand_labels

from cellfeat.features.areashape import KEYS, _reference_areashape, areashape
from cellfeat.features.neighbors import _reference_neighbors, expand_until_adjacent, keys, neighbors
from cellfeat.images import load_site

cp_bulk = pytest.importorskip("cp_measure.bulk")
from cp_measure.multimask.measureobjectneighbors import measureobjectneighbors  # noqa: E402

RTOL = 1e-6
# Central moments of order 1 are 0 up to round-off (~1e-13 on these sizes), and so are some
# odd moments of symmetric objects: an absolute floor far below any real moment.
ATOL = 1e-9
ZERNIKE = [k for k in KEYS if "Zernike" in k]
# First-order central moments are exactly 0; both sides hold round-off of the centroid times
# sums over up to ~1e4 pixels (seen: 5e-9 on a real cell), so they get an absolute tolerance.
ZERO_MOMENTS = {"AreaShape_CentralMoment_0_1", "AreaShape_CentralMoment_1_0"}
ZERO_MOMENT_ATOL = 1e-6


def synthetic_labels(seed: int = 0, shape=(128, 128), n: int = 24) -> np.ndarray:
    """Random rotated ellipses (touching and border-cut ones), a ring with a hole, 1- and 2-pixel
    objects, a line; contiguous labels 1..N."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        rr, cc = ellipse(r, c, rng.integers(2, 14), rng.integers(2, 14), shape=shape, rotation=rng.uniform(0, np.pi))
        labels[rr, cc] = k
    labels = label(labels, connectivity=1, background=0).astype(np.int32)
    m = labels.max()
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    ring = (np.hypot(yy - 20, xx - 100) <= 9) & (np.hypot(yy - 20, xx - 100) >= 4)
    labels[ring] = m + 1
    labels[np.hypot(yy - 20, xx - 100) < 4] = 0
    labels[shape[0] - 1, 0] = m + 2  # one pixel in a corner
    labels[60, 0:2] = m + 3  # two pixels on the border
    labels[100:101, 40:60] = m + 4  # a straight line
    return label(labels, connectivity=1, background=0).astype(np.int32)


def stand_in_masks(pixels: np.ndarray, crop: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei by Otsu on w1, cells by expanding them 8 px: a stand-in for the segmentation stage."""
    w1 = pixels[0, :crop, :crop]
    nuclei = label(w1 > threshold_otsu(w1)).astype(np.int32)
    return nuclei, expand_labels(nuclei, 8).astype(np.int32)


def cp_areashape(labels: np.ndarray) -> dict[str, np.ndarray]:
    core = cp_bulk.get_core_measurements()
    out = {}
    with np.errstate(all="ignore"):
        for name in ("sizeshape", "zernike", "feret"):
            out.update(core[name](labels, None))
    return {f"AreaShape_{k}": np.asarray(v, float) for k, v in out.items()}


def _circle_alone_agrees(labels: np.ndarray, k: int, ours: dict) -> bool:
    """Our Zernikes of label k equal centrosome's (cp_measure's) on an image holding k alone."""
    alone = cp_areashape((labels == k).astype(np.int32))
    return all(np.isclose(ours[z][k - 1], alone[z][0], rtol=RTOL, atol=ATOL) for z in ZERNIKE)


def assert_areashape_matches_cp(labels: np.ndarray, max_zernike_outliers: float) -> None:
    ours, ref = areashape(labels), cp_areashape(labels)
    assert set(ours) == set(KEYS) and set(KEYS) <= set(ref)
    # Deliberate difference: FormFactor of a zero-perimeter (1-pixel) object is NaN, cp_measure inf.
    ref["AreaShape_FormFactor"][np.isinf(ref["AreaShape_FormFactor"])] = np.nan
    # Orientation of a mirror-symmetric object (mu11 exactly 0) is +90 or -90 degrees (the same
    # axis) by the sign of round-off in mu11, in cp_measure as here: compare it modulo 180.
    turn = np.abs(ours["AreaShape_Orientation"] - ref["AreaShape_Orientation"]) > 179.999
    ours["AreaShape_Orientation"] = np.where(turn, ref["AreaShape_Orientation"], ours["AreaShape_Orientation"])
    for key in KEYS:
        if key not in ZERNIKE:
            atol = ZERO_MOMENT_ATOL if key in ZERO_MOMENTS else ATOL
            np.testing.assert_allclose(ours[key], ref[key], rtol=RTOL, atol=atol, equal_nan=True, err_msg=key)
    # Zernike: centrosome's enclosing circle is reproduced step by step, but where 4+ hull pixels
    # are cocircular its choice among tied vertices comes from an unstable argsort over *all*
    # objects of the image, which moves the radius by an ulp and with it whether those pixels
    # (r^2 == 1 up to round-off) count. Such objects must then agree with centrosome run on the
    # object alone, and be rare.
    z_ours = np.column_stack([ours[k] for k in ZERNIKE])
    z_ref = np.column_stack([ref[k] for k in ZERNIKE])
    close = np.isclose(z_ours, z_ref, rtol=RTOL, atol=ATOL, equal_nan=True).all(axis=1)
    outliers = np.flatnonzero(~close) + 1
    assert len(outliers) <= max_zernike_outliers * len(close), outliers
    for k in outliers:
        assert _circle_alone_agrees(labels, k, ours), k


@pytest.mark.parametrize("seed", [0, 1])
def test_areashape_matches_cp_measure_on_synthetic_objects(seed):
    assert_areashape_matches_cp(synthetic_labels(seed), max_zernike_outliers=0.05)


def test_areashape_reference_agrees():
    labels = synthetic_labels(2)
    ours, ref = areashape(labels), _reference_areashape(labels)
    for key in KEYS:
        if key not in ZERNIKE:
            atol = ZERO_MOMENT_ATOL if key in ZERO_MOMENTS else ATOL
            np.testing.assert_allclose(ours[key], ref[key], rtol=RTOL, atol=atol, equal_nan=True, err_msg=key)


@pytest.mark.realdata
def test_areashape_matches_cp_measure_on_a_real_site(real_sites):
    nuclei, cells = stand_in_masks(load_site(real_sites[3][1]))
    assert nuclei.max() > 5
    for labels in (nuclei, cells):
        assert_areashape_matches_cp(labels, max_zernike_outliers=0.05)


def test_areashape_edge_cases():
    empty = areashape(np.zeros((6, 6), np.int32))
    assert set(empty) == set(KEYS) and all(v.shape == (0,) and v.dtype == np.float64 for v in empty.values())
    labels = np.zeros((9, 9), np.int32)
    labels[0, 0] = 1  # 1 pixel in the corner
    labels[4:9, 4:9] = 3  # label 2 is a gap; 3 touches the border
    out = areashape(labels)
    undefined = {f"AreaShape_NormalizedMoment_{p}_{q}" for p, q in ((0, 0), (0, 1), (1, 0))}  # NaN by definition
    for key, values in out.items():
        assert np.isnan(values[1]), key
        assert np.isfinite(values[2]) or key in undefined, key
    assert out["AreaShape_Area"][0] == 1 and out["AreaShape_Perimeter"][0] == 0
    assert np.isnan(out["AreaShape_FormFactor"][0])  # cp_measure: inf (4 pi A / 0)
    assert np.isnan(out["AreaShape_Zernike_0_0"][0])  # radius 0: CellProfiler's NaN (0/0)


def test_areashape_relabel_and_translation_invariance():
    labels = synthetic_labels(4)
    n = labels.max()
    perm = np.random.default_rng(4).permutation(n) + 1
    relabelled = np.concatenate([[0], perm])[labels].astype(np.int32)
    a, b = areashape(labels), areashape(relabelled)
    for key in KEYS:
        np.testing.assert_array_equal(a[key], b[key][perm - 1], err_msg=key)
    dy, dx = 5, 9
    moved = areashape(np.pad(labels, ((dy, 1), (dx, 3))))
    shifts = {"Center_X": dx, "BoundingBoxMinimum_X": dx, "BoundingBoxMaximum_X": dx}
    shifts |= {"Center_Y": dy, "BoundingBoxMinimum_Y": dy, "BoundingBoxMaximum_Y": dy}
    for key in KEYS:
        shift = shifts.get(key.removeprefix("AreaShape_"), 0)
        # objects cut by the old border are now whole-but-padded: still the same pixels
        np.testing.assert_allclose(moved[key], a[key] + shift, rtol=1e-9, atol=ATOL, equal_nan=True, err_msg=key)


# --------------------------------------------------------------------------- neighbours


def cp_neighbors(labels, method, distance=5):
    cp_method = {"Adjacent": "Adjacent", "Expanded": "Adjacent"}.get(method, "Within a specified distance")
    if method == "Expanded":
        # CellProfiler expands objects *and* neighbours; cp_measure 0.3 expands only the
        # objects, so give it the expanded labels as both, with the Adjacent method.
        labels = expand_until_adjacent(labels)
    out = measureobjectneighbors(labels, labels, cp_method, distance=distance)
    suffix = {"Adjacent": "Adjacent", "Expanded": "Adjacent"}.get(method, str(distance))
    return {k: np.asarray(out[k.replace(f"_{scale}", f"_{suffix}")], float) for scale in [method] for k in keys(method)}


@pytest.mark.parametrize("method", ["Adjacent", 2, "Expanded"])
def test_neighbors_match_cp_measure(method):
    labels = expand_labels(synthetic_labels(6), 2).astype(np.int32)
    ours = neighbors(labels, method=method)
    ref = cp_neighbors(labels, method, distance=method if isinstance(method, int) else 5)
    for key in keys(method):
        np.testing.assert_allclose(ours[key], ref[key], rtol=RTOL, atol=ATOL, err_msg=key)
    if method == "Adjacent":
        plain = _reference_neighbors(labels)
        for key in keys(method):
            np.testing.assert_allclose(ours[key], plain[key], rtol=1e-9, atol=ATOL, err_msg=key)


@pytest.mark.realdata
def test_neighbors_match_cp_measure_on_a_real_site(real_sites):
    _, cells = stand_in_masks(load_site(real_sites[5][1]))
    ours, ref = neighbors(cells), cp_neighbors(cells, "Adjacent")
    for key in keys():
        np.testing.assert_allclose(ours[key], ref[key], rtol=RTOL, atol=ATOL, err_msg=key)


def test_neighbors_edge_cases():
    assert all(v.shape == (0,) for v in neighbors(np.zeros((5, 5), np.int32)).values())
    one = np.zeros((5, 5), np.int32)
    one[1:3, 1:3] = 1
    assert all(v[0] == 0 for v in neighbors(one).values())  # a lone object: zeros, as cp_measure
    gap = np.zeros((6, 6), np.int32)
    gap[0:2, 0:3], gap[2:4, 0:3] = 1, 3
    out = neighbors(gap)
    assert np.isnan(out["Neighbors_NumberOfNeighbors_Adjacent"][1])
    assert out["Neighbors_NumberOfNeighbors_Adjacent"][[0, 2]].tolist() == [1, 1]
